"""Fused mixture-of-experts on the GPU: `fused_experts`, the Triton path of the MoE layer.

Same function as `radixlm.layers.moe.reference.experts_reference` (its docstring gives the weight
layout: w13 [E, 2I, H] gate rows then up rows, w2 [E, H, I]). Four launches (five beyond 1,024
rows), no host sync (so a CUDA graph can capture it; every buffer is sized from T, k, E and the
block size alone):

1. `_align_kernel` (+ `_scatter_kernel` beyond 1,024 rows): the T*k (token, slot) rows,
   numbered `r = t*k + j`, are grouped by expert into blocks of BLOCK_M rows. Expert e's rows
   fill `ceil(count_e / BLOCK_M)` blocks starting at its padded offset; the tail of its last
   block holds the pad value T*k. `block_expert[b]` is the expert of block b; `num_padded` is
   the number of rows used, at most `max_padded = T*k + min(E, T*k) * (BLOCK_M - 1)`. Rows
   whose id is outside [0, E) (another expert-parallel rank's experts) are in no block, and
   experts without rows have no block, so the GEMMs read only the selected experts' weights.
2. `_gate_up_kernel`: per block, the gate and up rows of the same columns of its expert's w13
   (interleaved into one tile of twice the width) against the block's token rows; the epilogue
   writes silu(gate) * up into `act` [T*k, I].
3. `_down_kernel`: per block, act @ w2[e]^T times the row's routing weight into `y` [T*k, H].
4. `_sum_kernel`: out[t] = sum_j y[t*k + j] over the slots whose id is in [0, E) (float32 sum,
   in a fixed order: the result does not depend on the order of rows within an expert). With
   `MoeConfig.atomic_sum` the down kernel instead adds its rows into a zeroed float32 [T, H]
   (atomics, order not fixed) that is then cast into `out`: [T*k, H] is neither written nor
   read back, for a memset and a cast.

At decode sizes (at most `pdl.MAX_ROWS` tokens, Hopper) the four kernels are launched with
programmatic dependent launch, each entering `pdl_enter()` before it touches memory, so each
launches under the previous one's tail (the GEMMs cannot start their weight stream early: which
experts to read comes from the alignment).

The batch-dependent integers (rows, blocks) are not specialised by the JIT, so a new batch size
compiles nothing new unless it changes `moe_config`'s choice, PDL (T <= 16) or the one-launch
alignment (<= 1,024 rows).

Matmuls accumulate in float32; `act` and `y` are stored in x's dtype. Block sizes come from
`moe_config` (decode-size batches BLOCK_M 16 with narrow N tiles so the few selected experts
still spread over every SM; prefill 64 or 128).
"""

from __future__ import annotations

from typing import Optional

import torch

from radixlm.kernels.moe_align import ExpertBlocks, align_by_expert, max_padded_rows
from radixlm.kernels.moe_config import GemmConfig, MoeConfig, moe_config

# re-exported: the kernel tests and benchmarks/moe_bench.py import these from here
__all__ = [
    "ExpertBlocks",
    "GemmConfig",
    "MoeConfig",
    "align_by_expert",
    "fused_experts",
    "fused_experts_with_config",
    "max_padded_rows",
    "moe_config",
]

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


if triton is not None:

    @triton.jit
    def _tile(num_blocks, n, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(block, N tile) of this program, GROUP_M blocks sharing each N tile in turn."""
        pid = tl.program_id(0)
        tiles_n = tl.cdiv(n, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        size_m = tl.minimum(num_blocks - first_m, GROUP_M)
        return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m

    @triton.jit(do_not_specialize=["num_rows", "max_blocks"])
    def _gate_up_kernel(
        x_ptr,
        w_ptr,
        act_ptr,
        sorted_ptr,
        block_expert_ptr,
        num_padded_ptr,
        num_rows,
        max_blocks,
        N,
        K,
        stride_x,
        stride_we,
        stride_wn,
        stride_act,
        top_k,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
        EVEN_K: tl.constexpr,
        PRECISION: tl.constexpr,
        WIDEN: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """act[r, n] = silu(x[r // k] . w[e, n]) * (x[r // k] . w[e, N + n]) for the rows r of one
        block of expert e and BLOCK_N columns n (w's last dimension contiguous). One dot of
        2 * BLOCK_N columns: gate and up rows interleaved (column 2c is gate row n0 + c, column
        2c + 1 up row N + n0 + c), split apart in the epilogue."""
        if PDL:
            pdl_enter()
        pid_m, pid_n = _tile(max_blocks, N, BLOCK_N, GROUP_M)
        if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
            return
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        rows = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        row_ok = rows < num_rows
        tokens = (rows // top_k).to(tl.int64)
        cols = tl.arange(0, 2 * BLOCK_N)
        # wrapped, not masked: columns past N are computed from other rows and never stored
        w_rows = ((pid_n * BLOCK_N + cols // 2) % N + (cols % 2) * N).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = x_ptr + tokens[:, None] * stride_x + offs_k[None, :]
        b_ptrs = w_ptr + expert * stride_we + w_rows[None, :] * stride_wn + offs_k[:, None]
        acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                k_ok = offs_k < K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            if WIDEN:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        gate, up = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_N, 2]))
        h = gate * tl.sigmoid(gate) * up
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        out_ptrs = act_ptr + rows[:, None].to(tl.int64) * stride_act + offs_n[None, :]
        tl.store(out_ptrs, h.to(act_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_n[None, :] < N))

    @triton.jit(do_not_specialize=["num_rows", "max_blocks"])
    def _down_kernel(
        act_ptr,
        w_ptr,
        y_ptr,
        weights_ptr,
        sorted_ptr,
        block_expert_ptr,
        num_padded_ptr,
        num_rows,
        max_blocks,
        N,
        K,
        stride_act,
        stride_we,
        stride_wn,
        stride_y,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
        EVEN_K: tl.constexpr,
        PRECISION: tl.constexpr,
        WIDEN: tl.constexpr,
        top_k,
        ATOMIC: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """y[r, n] = weights[r] * (act[r] . w[e, n]) for the rows r of one block of expert e and
        N tile (w's last dimension contiguous); with ATOMIC, y is the float32 [T, H] sum instead
        (zeroed beforehand) and the product is added to row r // top_k."""
        if PDL:
            pdl_enter()
        pid_m, pid_n = _tile(max_blocks, N, BLOCK_N, GROUP_M)
        if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
            return
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        rows = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        row_ok = rows < num_rows
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        w_rows = (offs_n % N).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = act_ptr + rows[:, None].to(tl.int64) * stride_act + offs_k[None, :]
        b_ptrs = w_ptr + expert * stride_we + w_rows[None, :] * stride_wn + offs_k[:, None]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(b_ptrs)
            else:
                k_ok = offs_k < K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            if WIDEN:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        acc *= tl.load(weights_ptr + rows, mask=row_ok, other=0.0)[:, None]
        mask = row_ok[:, None] & (offs_n[None, :] < N)
        if ATOMIC:
            out_ptrs = y_ptr + (rows // top_k)[:, None].to(tl.int64) * stride_y + offs_n[None, :]
            tl.atomic_add(out_ptrs, acc, mask=mask, sem="relaxed")
        else:
            out_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_y + offs_n[None, :]
            tl.store(out_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)

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


def _check_inputs(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    out: Optional[torch.Tensor],
) -> None:
    e, two_i, h = w13.shape
    if x.dim() != 2 or x.shape[1] != h or w2.shape != (e, h, two_i // 2) or two_i % 2:
        raise ValueError(f"fused_experts: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
    if w13.dtype != x.dtype or w2.dtype != x.dtype or w13.stride(-1) != 1 or w2.stride(-1) != 1:
        raise ValueError("fused_experts: weights must have x's dtype and a contiguous last dimension")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0] or topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"fused_experts: {x.shape[0]} tokens, topk_ids {tuple(topk_ids.shape)}, "
            f"topk_weights {tuple(topk_weights.shape)}"
        )
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.stride(-1) != 1):
        raise ValueError("fused_experts: out must be [T, H] in x's dtype with a contiguous last dimension")


def _dot_modes(x: torch.Tensor) -> tuple[str, bool]:
    """(input precision, widen): float32 inputs multiply in full precision; Triton's interpreter
    multiplies bf16 dot operands as raw 16-bit integers, so on the CPU they are widened first."""
    return ("ieee" if x.dtype == torch.float32 else "tf32"), (x.device.type == "cpu" and x.dtype == torch.bfloat16)


def _gate_up(x: torch.Tensor, w13: torch.Tensor, blocks: ExpertBlocks, top_k: int, gemm: GemmConfig) -> torch.Tensor:
    """act [T*k, I] = silu(gate) * up of each routed row (rows of no block are left unwritten)."""
    num_rows, inter, hidden = x.shape[0] * top_k, w13.shape[1] // 2, w13.shape[2]
    max_blocks = blocks.block_expert.numel()
    act = torch.empty((num_rows, inter), dtype=x.dtype, device=x.device)
    precision, widen = _dot_modes(x)
    _gate_up_kernel[(max_blocks * triton.cdiv(inter, gemm.block_n),)](
        x,
        w13,
        act,
        blocks.sorted_rows,
        blocks.block_expert,
        blocks.num_padded,
        num_rows,
        max_blocks,
        inter,
        hidden,
        x.stride(0),
        w13.stride(0),
        w13.stride(1),
        act.stride(0),
        top_k,
        blocks.block_m,
        gemm.block_n,
        gemm.block_k,
        gemm.group_m,
        hidden % gemm.block_k == 0,
        precision,
        widen,
        num_warps=gemm.num_warps,
        num_stages=gemm.num_stages,
        **pdl_launch(x, x.shape[0]),
    )
    return act


def _down(
    act: torch.Tensor,
    w2: torch.Tensor,
    weights: torch.Tensor,
    blocks: ExpertBlocks,
    y: torch.Tensor,
    top_k: int,
    gemm: GemmConfig,
    atomic: bool,
) -> None:
    """y [T*k, H] = weight * (act @ w2[e]^T) per routed row; with `atomic`, y is the zeroed
    float32 [T, H] sum and each row adds into its token's row."""
    num_rows, inter = act.shape
    hidden = w2.shape[1]
    max_blocks = blocks.block_expert.numel()
    precision, widen = _dot_modes(act)
    _down_kernel[(max_blocks * triton.cdiv(hidden, gemm.block_n),)](
        act,
        w2,
        y,
        weights,
        blocks.sorted_rows,
        blocks.block_expert,
        blocks.num_padded,
        num_rows,
        max_blocks,
        hidden,
        inter,
        act.stride(0),
        w2.stride(0),
        w2.stride(1),
        y.stride(0),
        blocks.block_m,
        gemm.block_n,
        gemm.block_k,
        gemm.group_m,
        inter % gemm.block_k == 0,
        precision,
        widen,
        top_k,
        atomic,
        num_warps=gemm.num_warps,
        num_stages=gemm.num_stages,
        **pdl_launch(act, num_rows // top_k),
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
    _check_inputs(x, w13, w2, topk_weights, topk_ids, out)
    num_tokens, top_k = topk_ids.shape
    num_experts, hidden = w13.shape[0], w13.shape[2]
    x = x if x.stride(-1) == 1 else x.contiguous()
    ids = topk_ids.to(torch.int32).contiguous()
    weights = topk_weights.to(torch.float32).contiguous()
    if out is None:
        out = torch.empty_like(x)
    if ids.numel() == 0:
        return out.zero_()
    if config.atomic_sum:  # zeroed before the first kernel: the PDL chain has no memset inside
        total = torch.zeros((num_tokens, hidden), dtype=torch.float32, device=x.device)
    blocks = align_by_expert(ids, num_experts, config.block_m)
    act = _gate_up(x, w13, blocks, top_k, config.gate_up)
    if config.atomic_sum:
        _down(act, w2, weights, blocks, total, top_k, config.down, atomic=True)
        return out.copy_(total)
    y = torch.empty((ids.numel(), hidden), dtype=x.dtype, device=x.device)
    _down(act, w2, weights, blocks, y, top_k, config.down, atomic=False)
    _sum_top_k(y, ids, num_experts, out)
    return out


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
