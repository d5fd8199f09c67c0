"""The MoE router's matmul, top-k and expert alignment in one launch at decode sizes:
`route_from_hidden`.

At decode the router is a GEMV of T <= 16 rows against the [E, H] router weight (Qwen3-30B-A3B:
128 x 2048 bf16, 512 KB), then `moe_route`'s one-program top-k and alignment. As two launches
the GEMV (a plain matmul) ends the programmatic-dependent-launch chain of the layer and the
top-k waits for it; here `_router_route_kernel` splits the E experts over programs (a few
experts each, so the 512 KB stream over ~64 SMs), each loading its weight rows before the PDL
wait, storing its logits and counting itself on an arrival counter; the last program to arrive
runs `topk_of` on all logits (as `_route_align_kernel`'s top-k), then the alignment: at decode
sizes on the top-k ids still in registers (`align_in_registers`: nothing read back, no atomics;
each expert's rows in row order), beyond them `align_one_program` as `_route_align_kernel`.

Logits are accumulated in float32 and rounded to x's dtype (as a matmul in that dtype returns
them) before the softmax. The arrival counter is the caller's: one int32, zero before the
call and left zero by the last program (so a module allocates it once and every call, CUDA
graph replays included, reuses it; calls sharing a counter must not run concurrently). No host
sync (graph-capturable).
"""

from __future__ import annotations

import torch

from radixlm.kernels.moe_align import ONE_PROGRAM_ROWS, ExpertBlocks, blocks_chunk, empty_blocks
from radixlm.kernels.moe_route import fits_one_launch
from radixlm.kernels.moe_topk import TOPK_WARPS, check_topk_args, topk_block

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.moe_align import align_in_registers, align_one_program
    from radixlm.kernels.moe_topk import local_ids, topk_of
    from radixlm.kernels.pdl import pdl_launch, pdl_release, pdl_wait
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

# the router weight elements one program holds per step ([experts per program, BLOCK_H])
_TILE = 4096
# programs the router's experts are spread over, at most (one expert each below this)
_PROGRAMS = 64
# the largest [T*k, local experts] one-hot of the alignment in registers (`align_in_registers`)
_REGISTER_ALIGN = 8192


def experts_per_program(num_experts: int) -> int:
    """Router rows one program multiplies: a power of two giving at most `_PROGRAMS` programs."""
    return triton.next_power_of_2(triton.cdiv(num_experts, _PROGRAMS))


def aligns_in_registers(num_tokens: int, num_experts: int, top_k: int, local_pow2: int) -> bool:
    """Whether the last program aligns the top-k ids in registers (`align_in_registers`): its
    [rows, local experts] one-hot (`local_pow2`: the local experts padded to a power of two) is
    at most `_REGISTER_ALIGN` entries; else it stores them and runs `align_one_program`."""
    rows = topk_block(num_tokens, num_experts) * triton.next_power_of_2(top_k)
    return rows * local_pow2 <= _REGISTER_ALIGN


if triton is not None:

    @triton.jit
    def _add_chunk(acc, w, x_ptr, stride_x, h0, hidden, num_tokens, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
        """acc[t, e] += x[t, h0:h0 + BLOCK_H] . w[e] for each token t < num_tokens (float32)."""
        cols = h0 + tl.arange(0, BLOCK_H)
        tokens = tl.arange(0, BLOCK_T)
        wf = w.to(tl.float32)
        for t in range(0, num_tokens):
            xv = tl.load(x_ptr + t * stride_x + cols, mask=cols < hidden, other=0.0).to(tl.float32)
            part = tl.sum(wf * xv[None, :], axis=1)
            acc = tl.where(tokens[:, None] == t, acc + part[None, :], acc)
        return acc

    @triton.jit(do_not_specialize=["num_tokens", "max_padded", "max_blocks", "num_done"])
    def _router_route_kernel(
        x_ptr,
        router_ptr,
        logits_ptr,
        arrivals_ptr,
        weights_ptr,
        ids_ptr,
        sorted_ptr,
        cursor_ptr,
        block_expert_ptr,
        num_padded_ptr,
        done_ptr,
        num_done,
        num_tokens,
        num_experts,
        hidden,
        stride_x,
        stride_router,
        first_expert,
        num_local,
        max_padded,
        max_blocks,
        EXPERTS_PER_PROGRAM: tl.constexpr,
        BLOCK_H: tl.constexpr,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        E_POW2: tl.constexpr,
        BLOCK_T: tl.constexpr,
        RENORMALIZE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        LOCAL_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCKS_CHUNK: tl.constexpr,
        IN_REGISTERS: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """Program p: logits[t, e] = round(x[t] . router[e]) for its EXPERTS_PER_PROGRAM experts e
        and every token t (float32, rounded to x's dtype), stored into `logits` [T, E]; then it
        counts itself on `arrivals`. The last to arrive resets the counter, then runs
        `_route_align_kernel`'s body on the stored logits (read from L2: other programs wrote
        them), with IN_REGISTERS the alignment on the top-k ids still in registers."""
        if PDL:
            pdl_release()
        experts = tl.program_id(0) * EXPERTS_PER_PROGRAM + tl.arange(0, EXPERTS_PER_PROGRAM)
        e_ok = experts < num_experts
        cols = tl.arange(0, BLOCK_H)
        w_rows = router_ptr + experts[:, None].to(tl.int64) * stride_router + cols[None, :]
        w = tl.load(w_rows, mask=e_ok[:, None] & (cols[None, :] < hidden), other=0.0)
        if PDL:
            pdl_wait()
        acc = tl.zeros([BLOCK_T, EXPERTS_PER_PROGRAM], dtype=tl.float32)
        acc = _add_chunk(acc, w, x_ptr, stride_x, 0, hidden, num_tokens, BLOCK_T, BLOCK_H)
        for h0 in range(BLOCK_H, hidden, BLOCK_H):
            w = tl.load(w_rows + h0, mask=e_ok[:, None] & (h0 + cols[None, :] < hidden), other=0.0)
            acc = _add_chunk(acc, w, x_ptr, stride_x, h0, hidden, num_tokens, BLOCK_T, BLOCK_H)
        tokens = tl.arange(0, BLOCK_T)
        t_ok = tokens < num_tokens
        rounded = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
        out = tokens[:, None] * num_experts + experts[None, :]
        tl.store(logits_ptr + out, rounded, mask=t_ok[:, None] & e_ok[None, :])
        tl.debug_barrier()  # every thread's logits precede the release
        arrived = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="gpu")
        if arrived == tl.num_programs(0) - 1:
            tl.atomic_xchg(arrivals_ptr, 0, sem="relaxed", scope="gpu")  # every program has counted
            every = tl.arange(0, E_POW2)
            ok = t_ok[:, None] & (every[None, :] < num_experts)
            all_logits = tl.load(
                logits_ptr + tokens[:, None] * num_experts + every[None, :],
                mask=ok,
                other=float("-inf"),
                cache_modifier=".cg",
            )
            chosen_w, chosen_id, mask = topk_of(all_logits, t_ok, ok, TOP_K, K_POW2, E_POW2, BLOCK_T, RENORMALIZE)
            slots = tokens[:, None].to(tl.int64) * TOP_K + tl.arange(0, K_POW2)[None, :]
            tl.store(weights_ptr + slots, chosen_w, mask=mask)
            chosen = local_ids(chosen_id, first_expert, num_local)
            tl.store(ids_ptr + slots, chosen, mask=mask)
            if IN_REGISTERS:
                align_in_registers(
                    tl.reshape(tl.where(mask, chosen, -1), [BLOCK_T * K_POW2]),
                    tl.reshape(slots.to(tl.int32), [BLOCK_T * K_POW2]),
                    sorted_ptr,
                    block_expert_ptr,
                    num_padded_ptr,
                    done_ptr,
                    num_done,
                    num_tokens * TOP_K,
                    max_padded,
                    max_blocks,
                    BLOCK_T * K_POW2,
                    BLOCK_M,
                    LOCAL_POW2,
                    CHUNK,
                    BLOCKS_CHUNK,
                )
            else:
                tl.debug_barrier()  # the ids, stored by every thread, are read back by others
                align_one_program(
                    ids_ptr,
                    sorted_ptr,
                    cursor_ptr,
                    block_expert_ptr,
                    num_padded_ptr,
                    done_ptr,
                    num_done,
                    num_tokens * TOP_K,
                    num_local,
                    max_padded,
                    max_blocks,
                    BLOCK_M,
                    LOCAL_POW2,
                    CHUNK,
                    BLOCKS_CHUNK,
                )


def new_arrivals(device: torch.device) -> torch.Tensor:
    """A zeroed arrival counter for `route_from_hidden` (allocate once per caller)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def route_from_hidden(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    top_k: int,
    renormalize: bool,
    block_m: int,
    arrivals: torch.Tensor,
    first_expert: int = 0,
    num_local: int = -1,
    counters: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, ExpertBlocks, torch.Tensor]:
    """`route_and_align(x @ router_weight^T, ...)` in one launch: x [T, H] and router_weight
    [E, H] (same float dtype, contiguous last dimensions), T and k as `fits_one_launch` allows
    (ValueError otherwise); `arrivals` from `new_arrivals` (zero before, zero after). Returns
    (topk_weights float32 [T, k], topk_ids int32 [T, k] local to [first_expert, first_expert +
    num_local) or -1, blocks, the router logits float32 [T, E] rounded to x's dtype)."""
    num_tokens, hidden = x.shape
    num_experts = router_weight.shape[0]
    if router_weight.shape[1] != hidden or router_weight.dtype != x.dtype or router_weight.stride(-1) != 1:
        raise ValueError(f"route_from_hidden: x {tuple(x.shape)} {x.dtype}, router {tuple(router_weight.shape)}")
    if x.stride(-1) != 1 or arrivals.dtype != torch.int32 or arrivals.numel() != 1:
        raise ValueError("route_from_hidden: x needs a contiguous last dimension, arrivals one int32")
    logits = torch.empty((num_tokens, num_experts), dtype=torch.float32, device=x.device)
    check_topk_args(logits, top_k)
    num_local = num_experts if num_local < 0 else num_local
    if not fits_one_launch(num_tokens, num_experts, top_k) or counters > ONE_PROGRAM_ROWS:
        raise ValueError(f"route_from_hidden: {num_tokens} tokens x top-{top_k} of {num_experts} take two launches")
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=x.device)
    blocks, cursor = empty_blocks(ids.numel(), num_local, block_m, counters, x.device)
    per_program = experts_per_program(num_experts)
    block_t = topk_block(num_tokens, num_experts)
    _router_route_kernel[(triton.cdiv(num_experts, per_program),)](
        x,
        router_weight,
        logits,
        arrivals,
        weights,
        ids,
        blocks.sorted_rows,
        cursor,
        blocks.block_expert,
        blocks.num_padded,
        blocks.tile_done,
        counters,
        num_tokens,
        num_experts,
        hidden,
        x.stride(0),
        router_weight.stride(0),
        first_expert,
        num_local,
        blocks.sorted_rows.numel(),
        blocks.max_blocks,
        per_program,
        min(triton.next_power_of_2(hidden), _TILE // per_program),
        top_k,
        triton.next_power_of_2(top_k),
        triton.next_power_of_2(num_experts),
        block_t,
        renormalize,
        block_m,
        cursor.numel(),
        ONE_PROGRAM_ROWS,
        blocks_chunk(num_local),
        aligns_in_registers(num_tokens, num_experts, top_k, cursor.numel()),
        num_warps=TOPK_WARPS,
        **pdl_launch(x, num_tokens),
    )
    return weights, ids, blocks, logits
