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

import functools
from dataclasses import dataclass
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl

    from radixlm.kernels.pdl import pdl_enter, pdl_launch
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


@dataclass(frozen=True)
class GemmConfig:
    """One grouped GEMM's launch: tile sizes (N, K; the gate/up kernel's N counts output
    columns, its weight tile is 2 * block_n wide), programs sharing an M band (`group_m`, for
    L2 reuse of the weight tiles), warps and pipeline stages."""

    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class MoeConfig:
    """The rows per block (shared by the alignment and both GEMMs) and each GEMM's launch;
    `atomic_sum`: the down GEMM adds its rows into a zeroed float32 [T, H] buffer (atomics,
    then a cast into `out`) instead of writing [T*k, H] for the reduction kernel."""

    block_m: int
    gate_up: GemmConfig
    down: GemmConfig
    atomic_sum: bool = False


# programs a launch should reach before its N tile stops being narrowed (about two waves of an
# H100's 132 SMs)
_MIN_PROGRAMS = 264


def _block_n_for(active_experts: int, n: int, widest: int) -> int:
    """The widest N tile (from `widest` down to 16) that still gives `_MIN_PROGRAMS` programs
    over the selected experts' blocks."""
    block_n = widest
    while block_n > 16 and active_experts * triton.cdiv(n, block_n) < _MIN_PROGRAMS:
        block_n //= 2
    return block_n


@functools.lru_cache(maxsize=256)
def moe_config(num_rows: int, num_experts: int, hidden: int, inter: int) -> MoeConfig:
    """Block sizes for T*k = `num_rows` routed rows over `num_experts` experts of hidden size
    `hidden` and intermediate size `inter`. Chosen by the mean rows per selected expert:
    <= 16 (decode) BLOCK_M 16 with long K tiles and N tiles narrowed until the selected experts
    fill the GPU; <= 48 BLOCK_M 32; <= 128 BLOCK_M 64; <= 384 BLOCK_M 128 with wide N tiles
    (many experts at prefill: Qwen3-30B-A3B at 4,096 tokens has 256 rows per expert); beyond,
    BLOCK_M 128 with narrower N tiles (large prefill of few experts). The gate/up kernel's
    `block_n` counts output columns: its weight tile and accumulator are twice as wide."""
    active = max(1, min(num_experts, num_rows))
    per_expert = num_rows / active
    if per_expert <= 16:
        return MoeConfig(
            16,
            GemmConfig(_block_n_for(active, inter, 64), 128, 1, 4, 4),
            GemmConfig(_block_n_for(active, hidden, 64), 128, 1, 4, 4),
        )
    if per_expert <= 48:
        return MoeConfig(32, GemmConfig(64, 64, 4, 4, 4), GemmConfig(64, 64, 4, 4, 4))
    if per_expert <= 128:
        return MoeConfig(64, GemmConfig(64, 64, 8, 4, 4), GemmConfig(128, 64, 8, 4, 4))
    if per_expert <= 384:
        return MoeConfig(128, GemmConfig(128, 64, 8, 8, 3), GemmConfig(256, 64, 8, 8, 3))
    return MoeConfig(128, GemmConfig(64, 64, 8, 8, 3), GemmConfig(128, 64, 8, 8, 3))


def max_padded_rows(num_rows: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the rows after padding each selected expert's rows to whole blocks: at
    most min(E, T*k) experts are selected, each wasting at most BLOCK_M - 1 rows."""
    return num_rows + min(num_experts, num_rows) * (block_m - 1)


if triton is not None:

    @triton.jit
    def _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, offs, num_rows, num_experts):
        """Each row r in `offs` with a valid expert e takes the next slot of e's blocks (an
        atomic on e's cursor) and writes r there."""
        e = tl.load(ids_ptr + offs, mask=offs < num_rows, other=-1)
        ok = (offs < num_rows) & (e >= 0) & (e < num_experts)
        dest = tl.atomic_add(cursor_ptr + tl.where(ok, e, 0), 1, mask=ok, sem="relaxed")
        tl.store(sorted_ptr + dest, offs, mask=ok)

    @triton.jit(do_not_specialize=["num_rows", "max_padded", "max_blocks"])
    def _align_kernel(
        ids_ptr,
        sorted_ptr,
        cursor_ptr,
        block_expert_ptr,
        num_padded_ptr,
        num_rows,
        num_experts,
        max_padded,
        max_blocks,
        BLOCK_M: tl.constexpr,
        E_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCKS_CHUNK: tl.constexpr,
        SCATTER: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """Fills `sorted` with the pad value `num_rows` (each program its CHUNK; with SCATTER
        the single program all of it); program 0 also counts the rows per expert and writes each
        expert's padded start into `cursor`, each block's expert into `block_expert` (-1 past
        the used blocks) and `num_padded`. With SCATTER (one program, num_rows <= CHUNK) it then
        scatters the rows itself, after a barrier, instead of `_scatter_kernel`."""
        if PDL:
            pdl_enter()
        pid = tl.program_id(0)
        pad = tl.full([CHUNK], 0, tl.int32) + num_rows
        if SCATTER:
            for first in range(0, max_padded, CHUNK):
                fill = first + tl.arange(0, CHUNK)
                tl.store(sorted_ptr + fill, pad, mask=fill < max_padded)
        else:
            fill = pid * CHUNK + tl.arange(0, CHUNK)
            tl.store(sorted_ptr + fill, pad, mask=fill < max_padded)
        if pid == 0:
            counts = tl.zeros([E_POW2], dtype=tl.int32)
            for start in range(0, num_rows, CHUNK):
                offs = start + tl.arange(0, CHUNK)
                e = tl.load(ids_ptr + offs, mask=offs < num_rows, other=-1)
                ok = (offs < num_rows) & (e >= 0) & (e < num_experts)
                counts += tl.histogram(tl.where(ok, e, 0), E_POW2, mask=ok)
            padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
            ends = tl.cumsum(padded, axis=0)
            experts = tl.arange(0, E_POW2)
            tl.store(cursor_ptr + experts, ends - padded)
            total = tl.sum(padded, axis=0)
            tl.store(num_padded_ptr, total)
            for first in range(0, max_blocks, BLOCKS_CHUNK):  # [BLOCKS_CHUNK, E_POW2] comparisons a step
                blocks = first + tl.arange(0, BLOCKS_CHUNK)
                row0 = blocks * BLOCK_M
                owner = tl.sum((ends[None, :] <= row0[:, None]).to(tl.int32), axis=1)
                owner = tl.where(row0 < total, owner, -1)
                tl.store(block_expert_ptr + blocks, owner, mask=blocks < max_blocks)
            if SCATTER:
                tl.debug_barrier()  # the pad fill and the cursors, stored by other threads, come first
                _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, tl.arange(0, CHUNK), num_rows, num_experts)

    @triton.jit(do_not_specialize=["num_rows"])
    def _scatter_kernel(ids_ptr, sorted_ptr, cursor_ptr, num_rows, num_experts, CHUNK: tl.constexpr):
        """`_scatter_rows` over this program's CHUNK of rows (after `_align_kernel`)."""
        offs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
        _scatter_rows(ids_ptr, sorted_ptr, cursor_ptr, offs, num_rows, num_experts)

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


@dataclass(frozen=True)
class ExpertBlocks:
    """The routed rows grouped by expert (see the module docstring): `sorted_rows` int32
    [max_padded] (row r = t*k + j, or the pad value T*k), `block_expert` int32 [max_blocks]
    (-1 past the used blocks), `num_padded` int32 [1] (rows used, a multiple of block_m)."""

    sorted_rows: torch.Tensor
    block_expert: torch.Tensor
    num_padded: torch.Tensor
    block_m: int


_CHUNK = 1024


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertBlocks:
    """Group the rows of `topk_ids` [T, k] (int32, contiguous) by expert into blocks of
    `block_m` rows, on the device without a host sync: one launch for up to `_CHUNK` rows
    (decode), else two (the fill and counts, then the scatter over many programs)."""
    num_rows = topk_ids.numel()
    max_padded = max_padded_rows(num_rows, num_experts, block_m)
    max_blocks = triton.cdiv(max_padded, block_m)
    dev = topk_ids.device
    e_pow2 = triton.next_power_of_2(max(num_experts, 2))
    sorted_rows = torch.empty(max_padded, dtype=torch.int32, device=dev)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    cursor = torch.empty(e_pow2, dtype=torch.int32, device=dev)
    single = num_rows <= _CHUNK
    # beyond one chunk program 0 counts alone, so it takes 4 chunks a step with 16 warps (32,768
    # rows: 8 dependent steps instead of 32)
    chunk, warps = (_CHUNK, 4) if single else (4 * _CHUNK, 16)
    _align_kernel[(1 if single else triton.cdiv(max_padded, chunk),)](
        topk_ids,
        sorted_rows,
        cursor,
        block_expert,
        num_padded,
        num_rows,
        num_experts,
        max_padded,
        max_blocks,
        block_m,
        e_pow2,
        chunk,
        max(16, 8192 // e_pow2),
        single,
        num_warps=warps,
        **pdl_launch(topk_ids, topk_ids.shape[0]),
    )
    if not single:
        _scatter_kernel[(triton.cdiv(num_rows, _CHUNK),)](topk_ids, sorted_rows, cursor, num_rows, num_experts, _CHUNK)
    return ExpertBlocks(sorted_rows, block_expert, num_padded, block_m)


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
