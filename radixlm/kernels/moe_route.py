"""Router top-k and expert alignment in one launch at decode sizes: `route_and_align`.

At decode a MoE block's routing is two tiny serial launches, `fused_topk` (softmax, top-k,
renormalisation of T rows of E logits) then `align_by_expert` (the routed rows grouped by expert
into blocks). Both are one program at most `ROUTE_MAX_TOKENS` tokens, so `_route_align_kernel`
runs them back to back in one program: the top-k rows (the jitted `topk_rows`, same tile and
warps as `fused_topk`'s one program), the weights and (local) ids stored, a barrier, then
`align_one_program` (same code as the one-launch alignment). Outputs equal the two-launch path's:
the same weights and ids bit for bit, the same `num_padded` and `block_expert`, the same rows in
each block (their order within an expert's blocks is the order of the scatter's atomics, on
either path; no result depends on it). No host sync (graph-capturable).
"""

from __future__ import annotations

import torch

from radixlm.kernels.moe_align import ALIGN_WARPS, ONE_PROGRAM_ROWS, ExpertBlocks, blocks_chunk, empty_blocks
from radixlm.kernels.moe_topk import TOPK_WARPS, check_topk_args, topk_block

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.moe_align import align_one_program
    from radixlm.kernels.moe_topk import local_ids, topk_rows
    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

# the decode sizes (pdl.MAX_ROWS): beyond them routing keeps its two launches
ROUTE_MAX_TOKENS = 16


def fits_one_launch(num_tokens: int, num_experts: int, top_k: int) -> bool:
    """Whether `route_and_align` can take T tokens of E logits to k experts: at most
    `ROUTE_MAX_TOKENS` tokens, all in one `fused_topk` program, and T*k rows for one alignment
    program. Both kernels use the same warps, so one program runs both unchanged."""
    return (
        1 <= num_tokens <= min(ROUTE_MAX_TOKENS, topk_block(num_tokens, num_experts))
        and num_tokens * top_k <= ONE_PROGRAM_ROWS
        and TOPK_WARPS == ALIGN_WARPS
    )


if triton is not None:

    @triton.jit(do_not_specialize=["num_tokens", "max_padded", "max_blocks", "num_done"])
    def _route_align_kernel(
        logits_ptr,
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
        stride_logits,
        first_expert,
        num_local,
        max_padded,
        max_blocks,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        E_POW2: tl.constexpr,
        BLOCK_T: tl.constexpr,
        RENORMALIZE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        LOCAL_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCKS_CHUNK: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """One program (grid (1,)): `_topk_kernel`'s body for tokens [0, BLOCK_T), then
        `align_one_program` over the T*k ids it stored, with `num_local` experts."""
        if PDL:
            pdl_enter()
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        chosen_w, chosen_id, mask = topk_rows(
            logits_ptr, tokens, num_tokens, num_experts, stride_logits, TOP_K, K_POW2, E_POW2, BLOCK_T, RENORMALIZE
        )
        out = tokens[:, None].to(tl.int64) * TOP_K + tl.arange(0, K_POW2)[None, :]
        tl.store(weights_ptr + out, chosen_w, mask=mask)
        tl.store(ids_ptr + out, local_ids(chosen_id, first_expert, num_local), mask=mask)
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


def route_and_align(
    router_logits: torch.Tensor,
    top_k: int,
    renormalize: bool,
    block_m: int,
    first_expert: int = 0,
    num_local: int = -1,
    counters: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, ExpertBlocks]:
    """`fused_topk(router_logits, top_k, renormalize, first_expert, num_local)` then
    `align_by_expert(ids, num_local, block_m, counters)` in one launch: (topk_weights float32
    [T, k], topk_ids int32 [T, k] local to the experts [first_expert, first_expert + num_local),
    -1 for others; num_local -1: all E), blocks). Only where `fits_one_launch` (ValueError
    otherwise); `counters` at most `ONE_PROGRAM_ROWS`."""
    check_topk_args(router_logits, top_k)
    num_tokens, num_experts = router_logits.shape
    num_local = num_experts if num_local < 0 else num_local
    if not fits_one_launch(num_tokens, num_experts, top_k) or counters > ONE_PROGRAM_ROWS:
        raise ValueError(f"route_and_align: {num_tokens} tokens x top-{top_k} of {num_experts} take two launches")
    dev = router_logits.device
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=dev)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=dev)
    blocks, cursor = empty_blocks(ids.numel(), num_local, block_m, counters, dev)
    _route_align_kernel[(1,)](
        router_logits,
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
        router_logits.stride(0),
        first_expert,
        num_local,
        blocks.sorted_rows.numel(),
        blocks.max_blocks,
        top_k,
        triton.next_power_of_2(top_k),
        triton.next_power_of_2(num_experts),
        topk_block(num_tokens, num_experts),
        renormalize,
        block_m,
        cursor.numel(),
        ONE_PROGRAM_ROWS,
        blocks_chunk(num_local),
        num_warps=TOPK_WARPS,
        **pdl_launch(router_logits, num_tokens),
    )
    return weights, ids, blocks
