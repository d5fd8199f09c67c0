"""Fused mixture-of-experts on the GPU: `fused_moe` (from router logits) and `fused_experts` (from
top-k weights and ids), the Triton path of the MoE layer.

Same function as `radixlm.layers.moe.reference.experts_reference` (its docstring gives the weight
layout: w13 [E, 2I, H] gate rows then up rows, w2 [E, H, I]), no host sync (so a CUDA graph can
capture it; every buffer is sized from T, k, E and the block size alone). The steps:

0. (`fused_moe` only) the router: softmax, top-k and renormalisation of the logits
   (`moe_topk.fused_topk`), ids made local to this rank's experts.
1. `_align_kernel` (+ `_scatter_kernel` beyond 1,024 rows): the T*k (token, slot) rows,
   numbered `r = t*k + j`, are grouped by expert into blocks of BLOCK_M rows. Expert e's rows
   fill `ceil(count_e / BLOCK_M)` blocks starting at its padded offset; the tail of its last
   block holds the pad value T*k. `block_expert[b]` is the expert of block b; `num_padded` is
   the number of rows used, at most `max_padded = T*k + min(E, T*k) * (BLOCK_M - 1)`. Rows
   whose id is outside [0, E) (another expert-parallel rank's experts) are in no block, and
   experts without rows have no block, so the GEMMs read only the selected experts' weights.
2. `moe_gemm.gate_up`: per block, the gate and up rows of the same columns of its expert's w13
   (interleaved into one tile of twice the width) against the block's token rows; the epilogue
   writes silu(gate) * up into `act` [T*k, I].
3. `moe_gemm.down`: per block, act @ w2[e]^T times the row's routing weight into `y` [T*k, H].
4. the top-k sum: out[t] = sum_j y[t*k + j] over the slots whose id is in [0, E) (float32, j in
   order: the result does not depend on the order of rows within an expert, nor on which
   program sums).

Launches (`moe_config.plan_moe` decides; `MoePlan.launches()` lists them). At decode sizes (at
most 16 tokens): `fused_moe` runs 0 and 1 as one kernel (`moe_route.route_and_align`) and the
down kernel does 4 itself (the last program of each N tile to finish, counted on a counter the
alignment zeroed, sums that tile for every token), so a routed decode is 3 launches
(`route_align`, `gate_up`, `down_sum`) and `fused_experts` 3 (`align`, `gate_up`, `down_sum`).
`fused_moe_from_hidden` takes the router's weight instead of its logits: at decode sizes its
first launch also runs the router's matmul (`moe_router.route_from_hidden`), so a whole routed
MoE block is 3 launches (`router_route_align`, `gate_up`, `down_sum`), all under PDL.
Larger batches: `topk`, `align` (+ `scatter` beyond 1,024 rows), `gate_up`, `down`, `sum`
(`_sum_kernel`). With `MoeConfig.atomic_sum` the down kernel instead adds its rows into a
zeroed float32 [T, H] (atomics, order not fixed) that is then cast into `out`: [T*k, H] is
neither written nor read back, for a memset and a cast. Every path gives the same `out` bit for
bit except the atomic sum.

At decode sizes (at most `pdl.MAX_ROWS` tokens, Hopper) the kernels are launched with
programmatic dependent launch, each entering `pdl_enter()` before it touches memory, so each
launches under the previous one's tail (the GEMMs cannot start their weight stream early: which
experts to read comes from the alignment).

The batch-dependent integers (rows, blocks) are not specialised by the JIT, so a new batch size
compiles nothing new unless it changes `moe_config`'s choice, PDL (T <= 16), the in-down sum's
token tile (a power of two >= T) or the one-launch alignment (<= 1,024 rows).

Matmuls accumulate in float32; `act` and `y` are stored in x's dtype. Block sizes come from
`moe_config` (decode-size batches BLOCK_M 16 with narrow N tiles so the few selected experts
still spread over every SM; prefill 64 or 128).
"""

from __future__ import annotations

from typing import Optional

import torch

from radixlm.kernels.moe_align import ExpertBlocks, align_by_expert, max_padded_rows
from radixlm.kernels.moe_config import GemmConfig, MoeConfig, MoePlan, moe_config, plan_moe
from radixlm.kernels.moe_gemm import down, gate_up
from radixlm.kernels.moe_route import route_and_align
from radixlm.kernels.moe_router import new_arrivals, route_from_hidden
from radixlm.kernels.moe_topk import fused_topk

# re-exported: the kernel tests and benchmarks/moe_bench.py import these from here
__all__ = [
    "ExpertBlocks",
    "GemmConfig",
    "MoeConfig",
    "align_by_expert",
    "fused_experts",
    "fused_experts_with_config",
    "fused_moe",
    "fused_moe_from_hidden",
    "fused_moe_from_hidden_with_config",
    "fused_moe_with_config",
    "new_arrivals",
    "max_padded_rows",
    "moe_config",
    "plan_moe",
]

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


if triton is not None:

    @triton.jit
    def _sum_kernel(
        y_ptr,
        ids_ptr,
        out_ptr,
        H,
        num_experts,
        stride_y,
        stride_out,
        TOP_K: tl.constexpr,
        BLOCK_H: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """out[t, h] = sum over slots j with a valid expert of y[t*k + j, h], float32, j in order."""
        if PDL:
            pdl_enter()
        t = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        h_ok = offs < H
        acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            e = tl.load(ids_ptr + t * TOP_K + j + tl.zeros([BLOCK_H], dtype=tl.int32))  # one id, every lane
            ok = (e >= 0) & (e < num_experts)
            acc += tl.load(y_ptr + (t * TOP_K + j) * stride_y + offs, mask=h_ok & ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + t * stride_out + offs, acc.to(out_ptr.dtype.element_ty), mask=h_ok)


def _check_weights(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, out: Optional[torch.Tensor]) -> None:
    e, two_i, h = w13.shape
    if x.dim() != 2 or x.shape[1] != h or w2.shape != (e, h, two_i // 2) or two_i % 2:
        raise ValueError(f"fused_experts: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
    if w13.dtype != x.dtype or w2.dtype != x.dtype or w13.stride(-1) != 1 or w2.stride(-1) != 1:
        raise ValueError("fused_experts: weights must have x's dtype and a contiguous last dimension")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.stride(-1) != 1):
        raise ValueError("fused_experts: out must be [T, H] in x's dtype with a contiguous last dimension")


def _check_routing(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> None:
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0] or topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"fused_experts: {x.shape[0]} tokens, topk_ids {tuple(topk_ids.shape)}, "
            f"topk_weights {tuple(topk_weights.shape)}"
        )


def _sum_top_k(y: torch.Tensor, ids: torch.Tensor, num_experts: int, out: torch.Tensor) -> None:
    """out[t] = sum over t's valid slots j of y[t*k + j] (float32, in slot order)."""
    num_tokens, top_k = ids.shape
    hidden = y.shape[1]
    block_h = min(1024, triton.next_power_of_2(hidden))
    _sum_kernel[(num_tokens, triton.cdiv(hidden, block_h))](
        y,
        ids,
        out,
        hidden,
        num_experts,
        y.stride(0),
        out.stride(0),
        top_k,
        block_h,
        num_warps=4,
        **pdl_launch(y, num_tokens),
    )


def _counters(plan: MoePlan, hidden: int, config: MoeConfig) -> int:
    """The down GEMM's arrival counters the alignment zeroes: one per N tile when it sums."""
    return triton.cdiv(hidden, config.down.block_n) if plan.top_k_sum == "in_down" else 0


def _experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    blocks: ExpertBlocks,
    config: MoeConfig,
    plan: MoePlan,
    out: torch.Tensor,
    total: Optional[torch.Tensor],
) -> torch.Tensor:
    """The GEMMs and the top-k sum on aligned rows (`total`: the zeroed float32 [T, H] of the
    atomic sum, else None)."""
    act = gate_up(x, w13, blocks, ids.shape[1], config.gate_up)
    if total is not None:
        down(act, w2, weights, ids, blocks, total, out, config.down, "atomic")
        return out.copy_(total)
    y = torch.empty((ids.numel(), x.shape[1]), dtype=x.dtype, device=x.device)
    down(act, w2, weights, ids, blocks, y, out, config.down, plan.top_k_sum)
    if plan.top_k_sum == "kernel":
        _sum_top_k(y, ids, w13.shape[0], out)
    return out


def _zeroed_sum(x: torch.Tensor, plan: MoePlan) -> Optional[torch.Tensor]:
    """The atomic sum's float32 [T, H], zeroed before the first kernel (so the PDL chain has no
    memset inside); None for the other sums."""
    if plan.top_k_sum != "atomic":
        return None
    return torch.zeros(x.shape, dtype=torch.float32, device=x.device)


def fused_experts_with_config(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    config: MoeConfig,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`fused_experts` with the block sizes given (tests and benchmark sweeps)."""
    _check_weights(x, w13, w2, out)
    _check_routing(x, topk_weights, topk_ids)
    num_tokens, top_k = topk_ids.shape
    num_experts, hidden = w13.shape[0], w13.shape[2]
    x = x if x.stride(-1) == 1 else x.contiguous()
    ids = topk_ids.to(torch.int32).contiguous()
    weights = topk_weights.to(torch.float32).contiguous()
    if out is None:
        out = torch.empty_like(x)
    if ids.numel() == 0:
        return out.zero_()
    plan = plan_moe(num_tokens, top_k, hidden, config)
    total = _zeroed_sum(x, plan)
    blocks = align_by_expert(ids, num_experts, config.block_m, _counters(plan, hidden, config))
    return _experts(x, w13, w2, weights, ids, blocks, config, plan, out, total)


def fused_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """out [T, H] (x's dtype; into `out` when given, [T, H] with a contiguous last dimension) =
    sum_j topk_weights[:, j] * expert_{topk_ids[:, j]}(x), as `experts_reference`: x [T, H]
    (bf16, fp16 or fp32, CUDA; CPU tensors only under TRITON_INTERPRET=1), w13 [E, 2I, H] and
    w2 [E, H, I] in x's dtype with contiguous last dimensions, topk_weights [T, k] (float32),
    topk_ids [T, k] (ids outside [0, E) contribute zero). Graph-capturable: no host sync."""
    config = moe_config(topk_ids.numel(), w13.shape[0], w13.shape[2], w2.shape[2])
    return fused_experts_with_config(x, w13, w2, topk_weights, topk_ids, config, out)


def fused_moe_with_config(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    renormalize: bool,
    config: MoeConfig,
    first_expert: int = 0,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`fused_moe` with the block sizes given (tests and benchmark sweeps)."""
    _check_weights(x, w13, w2, out)
    num_tokens, router_experts = router_logits.shape
    num_local, hidden = w13.shape[0], w13.shape[2]
    if num_tokens != x.shape[0] or not 0 <= first_expert <= router_experts - num_local:
        raise ValueError(
            f"fused_moe: x {tuple(x.shape)}, logits {tuple(router_logits.shape)}, experts "
            f"[{first_expert}, {first_expert + num_local})"
        )
    if num_tokens == 0:
        return torch.empty_like(x) if out is None else out
    plan = plan_moe(num_tokens, top_k, hidden, config, router_experts)
    total = _zeroed_sum(x, plan)
    counters = _counters(plan, hidden, config)
    if plan.route == "one_launch":
        weights, ids, blocks = route_and_align(
            router_logits, top_k, renormalize, config.block_m, first_expert, num_local, counters
        )
    else:
        weights, ids = fused_topk(router_logits, top_k, renormalize, first_expert, num_local)
        blocks = align_by_expert(ids, num_local, config.block_m, counters)
    x = x if x.stride(-1) == 1 else x.contiguous()
    return _experts(x, w13, w2, weights, ids, blocks, config, plan, torch.empty_like(x) if out is None else out, total)


def fused_moe(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    renormalize: bool,
    first_expert: int = 0,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A whole routed MoE from the router's logits [T, E_router]: `fused_topk(router_logits,
    top_k, renormalize)` (softmax, top-k, renormalised when asked) then `fused_experts` over
    this rank's experts [first_expert, first_expert + E) (w13 [E, 2I, H], w2 [E, H, I]; the
    other experts' slots contribute zero) into `out` (or a new [T, H]). Same results as those
    two calls; at decode sizes fewer launches (`plan_moe`): Qwen3-30B-A3B at batch 1 is three
    (`route_align`, `gate_up`, `down_sum`). Graph-capturable: no host sync."""
    config = moe_config(router_logits.shape[0] * top_k, w13.shape[0], w13.shape[2], w2.shape[2])
    return fused_moe_with_config(x, router_logits, w13, w2, top_k, renormalize, config, first_expert, out)


def fused_moe_from_hidden_with_config(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    renormalize: bool,
    arrivals: torch.Tensor,
    config: MoeConfig,
    first_expert: int = 0,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`fused_moe_from_hidden` with the block sizes given (tests and benchmark sweeps)."""
    _check_weights(x, w13, w2, out)
    num_tokens, router_experts = x.shape[0], router_weight.shape[0]
    num_local, hidden = w13.shape[0], w13.shape[2]
    x = x if x.stride(-1) == 1 else x.contiguous()
    in_kernel = router_weight.dtype == x.dtype and router_weight.stride(-1) == 1
    plan = plan_moe(num_tokens, top_k, hidden, config, router_experts, from_hidden=in_kernel)
    if plan.route != "hidden" or not 0 <= first_expert <= router_experts - num_local:
        logits = torch.nn.functional.linear(x, router_weight)
        return fused_moe_with_config(x, logits, w13, w2, top_k, renormalize, config, first_expert, out)
    total = _zeroed_sum(x, plan)
    weights, ids, blocks, _ = route_from_hidden(
        x, router_weight, top_k, renormalize, config.block_m, arrivals, first_expert, num_local,
        _counters(plan, hidden, config),
    )  # fmt: skip
    return _experts(x, w13, w2, weights, ids, blocks, config, plan, torch.empty_like(x) if out is None else out, total)


def fused_moe_from_hidden(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    renormalize: bool,
    arrivals: torch.Tensor,
    first_expert: int = 0,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`fused_moe(x, x @ router_weight^T, w13, w2, top_k, renormalize, first_expert, out)` with
    the router's weight [E_router, H]: at decode sizes (`plan_moe(..., from_hidden=True)` route
    "hidden") the logits are computed inside the routing launch, float32 rounded to x's dtype
    (as the matmul returns them; its summation order may differ in the last bit); elsewhere (or
    a router weight of another dtype) the matmul runs first and `fused_moe` follows. `arrivals`:
    the caller's counter from `new_arrivals`, zero before and after; calls sharing it must not
    run concurrently. Graph-capturable: no host sync."""
    config = moe_config(x.shape[0] * top_k, w13.shape[0], w13.shape[2], w2.shape[2])
    return fused_moe_from_hidden_with_config(
        x, router_weight, w13, w2, top_k, renormalize, arrivals, config, first_expert, out
    )
