"""GEMV and GEMM over `PackedInt4` (GPTQ, AWQ and GGUF Q4_K repacked at load; layout in
`layers/quantization/packed_int4.py`).

GEMV (decode rows, memory-bound). A program owns BLOCK_N output rows and a K range of whole
tiles of BLOCK_G groups; per tile it loads the words as a [BLOCK_N, BLOCK_G, GW] tensor (each
row's group words contiguous: 16-byte vectors), and per nibble plane i the GW consecutive
activations x[g G + i GW + j] (one load per plane, shared by all the program's rows). A code is
turned into a float without an int-to-float conversion (a quarter-rate instruction on Hopper):
moved to mantissa bits 19..22 under the exponent of 1.0, f = 1 + q / 16 exactly (a shift and an
and-or per code), so per group

    sum_k x_k (s q_k + b) = 16 s (sum_k x_k f_k - sum_k x_k) + b sum_k x_k,

with float32 sums: one multiply-add per code, the scale and bias once per (row, group). The
cancellation in the bracket costs at most ~5 of float32's 24 bits. Rows of x beyond the first
are further programs (the row index varies fastest, so programs sharing a weight tile run
together and the later ones read it from L2). K split over SPLIT_K programs (when N leaves too
few row tiles to fill the GPU) adds float32 partial sums atomically into a zeroed buffer.

GEMM (more rows): tiles of BLOCK_M rows, the weight tile unpacked to [BLOCK_N, BLOCK_K] in x's
dtype and multiplied with `tl.dot` (float32 accumulation; IEEE for float32 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import torch

from radixlm.layers.quantization.packed_int4 import PackedInt4, plane_of

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

SMS = 132  # H100 SXM; only the launch heuristics use it
GEMV_ROWS = 8  # batches of at most this many rows take the GEMV kernel


@dataclass(frozen=True)
class GemvConfig:
    """Launch shape of the GEMV: BLOCK_N rows x BLOCK_K elements per tile (a multiple of the
    group), K split over `split_k` programs, `num_warps` / `num_stages` as Triton's."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2


if triton is not None:

    @triton.jit
    def _plane(words, i: tl.constexpr):
        """Nibble i of each word as the float 1 + q / 16."""
        if 4 * i <= 19:
            t = words << (19 - 4 * i)
        else:
            t = words >> (4 * i - 19)
        return ((t & 0x00780000) | 0x3F800000).to(tl.float32, bitcast=True)

    @triton.jit
    def _int4_gemv_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        b_ptr,
        y_ptr,
        sums_ptr,
        counts_ptr,
        N,
        row_words,
        n_groups,
        stride_xm,
        stride_counts,
        groups_per_split,
        split_k,
        GW: tl.constexpr,
        SUBS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_G: tl.constexpr,
        SPLIT: tl.constexpr,
    ):
        row, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        plane: tl.constexpr = GW * 8
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rn_safe = tl.where(n_ok, rn, 0).to(tl.int64)[:, None, None]  # ragged rows read row 0, stored masked
        rg = tl.arange(0, BLOCK_G)[None, :, None]
        rw = tl.arange(0, GW)[None, None, :]
        # every tensor is 3-D [rows, groups, words] (sizes 1 where broadcast) so that all of them
        # share one layout and no per-tile layout conversion goes through shared memory
        w_ptrs = w_ptr + (rn_safe * row_words + rg * GW + rw)
        s_row = rn_safe * n_groups
        x_row = x_ptr + row.to(tl.int64) * stride_xm + rg * plane + rw  # [1, BG, GW]
        acc = tl.zeros((BLOCK_N, BLOCK_G, 1), dtype=tl.float32)
        g_first = pid_k * groups_per_split
        g_last = g_first + groups_per_split - BLOCK_G
        # the next tile's words, scales and biases are loaded before this tile's arithmetic (the
        # last iteration reloads its own tile, from cache)
        words = tl.load(w_ptrs + g_first * GW)
        s_off = _scale_offsets(s_row, g_first + rg, SUBS)
        s = tl.load(s_ptr + s_off)
        b = tl.load(b_ptr + s_off)
        for g0 in range(g_first, g_first + groups_per_split, BLOCK_G):
            g_next = tl.minimum(g0 + BLOCK_G, g_last)
            words_next = tl.load(w_ptrs + g_next * GW)
            s_off = _scale_offsets(s_row, g_next + rg, SUBS)
            s_next = tl.load(s_ptr + s_off)
            b_next = tl.load(b_ptr + s_off)
            xg = x_row + g0 * plane
            dots = tl.zeros((BLOCK_N, BLOCK_G, GW), dtype=tl.float32)
            x_sum = tl.zeros((1, BLOCK_G, 1), dtype=tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(xg + i * GW).to(tl.float32)
                dots += _plane(words, i) * xi
                x_sum += tl.sum(xi, axis=2, keep_dims=True)
            s32 = s.to(tl.float32)
            acc += (16.0 * s32) * (tl.sum(dots, axis=2, keep_dims=True) - x_sum) + b.to(tl.float32) * x_sum
            words, s, b = words_next, s_next, b_next
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        out = y_ptr + row.to(tl.int64) * N + rn
        if SPLIT:
            sums = sums_ptr + row.to(tl.int64) * N + rn
            _reduce_splits(y, out, sums, counts_ptr + row * stride_counts + pid_n, n_ok, split_k)
        else:
            tl.store(out, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.jit
    def _scale_offsets(s_row, sub, SUBS: tl.constexpr):
        """Offsets of the scales of plane groups `sub` (SUBS per scale group), declared
        non-contiguous so that their loads take the words' layout (no conversion per tile)."""
        return tl.max_contiguous(s_row + sub // SUBS, [1, 1, 1])

    @triton.jit
    def _reduce_splits(y, out, sums, count, n_ok, split_k):
        """Add this split's partial sums into the zeroed float32 `sums`; the tile's last split to
        arrive (counted at `count`) writes the total to `out` and zeroes `sums` and `count` again
        for the next call. The barrier and the counter's acquire-release order every thread's
        additions before the count, and the count before the last split's reads."""
        tl.atomic_add(sums, y, mask=n_ok, sem="relaxed")
        tl.debug_barrier()
        arrived = tl.atomic_add(count, 1, sem="acq_rel")
        if arrived == split_k - 1:
            total = tl.load(sums, mask=n_ok, other=0.0, cache_modifier=".cg")
            tl.store(out, total.to(out.dtype.element_ty), mask=n_ok)
            tl.store(sums, tl.zeros_like(total), mask=n_ok)
            tl.store(count, 0)

    @triton.jit
    def _int4_gemm_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        b_ptr,
        y_ptr,
        M,
        N,
        row_words,
        n_groups,
        stride_xm,
        groups_per_split,
        GW: tl.constexpr,
        SUBS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_G: tl.constexpr,
        ATOMIC: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        plane: tl.constexpr = GW * 8
        block_k: tl.constexpr = BLOCK_G * plane
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = rm < M, rn < N
        rn_safe = tl.where(n_ok, rn, 0).to(tl.int64)
        rg = tl.arange(0, BLOCK_G)
        rw = tl.arange(0, GW)
        rk = tl.arange(0, block_k)
        shifts = (tl.arange(0, 8) * 4)[None, None, :, None]
        w_off = rn_safe[:, None, None] * row_words + rg[None, :, None] * GW + rw[None, None, :]
        s_row = rn_safe[:, None] * n_groups
        x_off = rm[:, None].to(tl.int64) * stride_xm + rk[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        g_first = pid_k * groups_per_split
        for g0 in range(g_first, g_first + groups_per_split, BLOCK_G):
            x = tl.load(x_ptr + x_off + g0 * plane, mask=m_ok[:, None], other=0.0)
            words = tl.load(w_ptr + w_off + g0 * GW)  # [BN, BG, GW]
            s_off = s_row + (g0 + rg)[None, :] // SUBS
            s = tl.load(s_ptr + s_off).to(tl.float32)[:, :, None, None]
            b = tl.load(b_ptr + s_off).to(tl.float32)[:, :, None, None]
            q = ((words[:, :, None, :] >> shifts) & 0xF).to(tl.float32)  # [BN, BG, 8, GW]
            w = tl.reshape(q * s + b, (BLOCK_N, block_k)).to(x.dtype)  # element g G + i GW + j
            acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
        out = y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        mask = m_ok[:, None] & n_ok[None, :]
        if ATOMIC:
            tl.atomic_add(out, acc, mask=mask)
        else:
            tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)


# Batch-1 launches measured best by `benchmarks/int4_gemv_sweep.py`: (N, K, group) -> config.
TUNED: Mapping[tuple[int, int, int], GemvConfig] = MappingProxyType(
    {  # (n, k, group) -> the best launch of `benchmarks/int4_gemv_sweep.py --quick` on an H100 (Q4_K, fp16 scales)
        (6144, 4096, 32): GemvConfig(block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=1),
        (4096, 4096, 32): GemvConfig(block_n=64, block_k=256, split_k=4, num_warps=4, num_stages=1),
        (28672, 4096, 32): GemvConfig(block_n=64, block_k=256, split_k=2, num_warps=4, num_stages=1),
        (4096, 14336, 32): GemvConfig(block_n=64, block_k=512, split_k=8, num_warps=4, num_stages=1),
    }
)


def _tile_groups(block_k: int, group: int, groups: int) -> int:
    """Groups per K tile: block_k in whole groups, halved until it divides `groups` (a split's)."""
    tiles = max(block_k // group, 1)
    while groups % tiles:
        tiles //= 2
    return tiles


def _split(tiles: int, groups: int, tile_groups: int, programs: int, min_tiles: int) -> int:
    """K splits (a power of two): doubled while there are fewer than `programs` programs, the
    split divides the groups into whole tiles and each split keeps at least `min_tiles` tiles."""
    split = 1
    while tiles * split < programs and groups % (tile_groups * split * 2) == 0:
        if groups // (split * 2) < min_tiles * tile_groups:
            break
        split *= 2
    return split


def gemv_config(m: int, n: int, k: int, group: int) -> GemvConfig:
    """The GEMV launch: `TUNED`'s for one row at a measured shape; else tiles of 32 rows x 512
    elements, 4 warps (each thread holds 4 words of 2 rows per 16-byte load; no per-tile layout
    conversion: checked in the SASS), and K split while there are fewer than ~4 programs per
    SM (each split keeping at least two tiles; the split reduces inside the kernel)."""
    if m == 1 and (n, k, group) in TUNED:
        return TUNED[(n, k, group)]
    block_n, block_k, plane = 32, 512, plane_of(group)
    split = _split(m * -(-n // block_n), k // plane, _tile_groups(block_k, plane, k // plane), 4 * SMS, 2)
    return GemvConfig(block_n, block_k, split, num_warps=4)


def gemm_config(m: int, n: int, k: int, group: int) -> GemmConfig:
    """Default GEMM launch (tensor cores, K tile of 128)."""
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 64 if m <= 32 else 128
    tiles = -(-m // block_m) * -(-n // block_n)
    plane = plane_of(group)
    split = _split(tiles, k // plane, _tile_groups(128, plane, k // plane), 2 * SMS, 4)
    return GemmConfig(block_m, block_n, 128, split)


def _plan(p: PackedInt4, k: int, split: int, block_k: int, what: str) -> tuple[int, int]:
    """(plane groups per split, plane groups per tile); ValueError when K does not split evenly."""
    subs = k // p.plane
    if k != p.k or subs % split:
        raise ValueError(f"int4 {what}: K {k} (weight {p.k}, plane group {p.plane}) does not split {split} ways")
    return subs // split, _tile_groups(block_k, p.plane, subs // split)


def _out(m: int, n: int, split: int, x: torch.Tensor) -> torch.Tensor:
    if split == 1:
        return torch.empty((m, n), dtype=x.dtype, device=x.device)
    return torch.zeros((m, n), dtype=torch.float32, device=x.device)


@dataclass(frozen=True)
class SplitWorkspace:
    """The GEMV's K-split reduction buffers for one weight: float32 `sums` [GEMV_ROWS, N] and int32
    arrival `counts` [GEMV_ROWS, cdiv(N, 8)]. Invariant: all zero between calls (each tile's
    last split zeroes its slots), so one allocation at load serves every call, CUDA graphs too;
    calls sharing one workspace must not run concurrently."""

    sums: torch.Tensor
    counts: torch.Tensor


def workspace(n: int, device: torch.device) -> SplitWorkspace:
    return SplitWorkspace(
        torch.zeros((GEMV_ROWS, n), dtype=torch.float32, device=device),
        torch.zeros((GEMV_ROWS, -(-n // 8)), dtype=torch.int32, device=device),
    )


def needs_workspace(n: int, k: int, group: int) -> bool:
    """Whether some batch of up to GEMV_ROWS rows splits K by default."""
    return any(gemv_config(m, n, k, group).split_k > 1 for m in range(1, GEMV_ROWS + 1))


def gemv(
    p: PackedInt4, x: torch.Tensor, config: Optional[GemvConfig] = None, ws: Optional[SplitWorkspace] = None
) -> torch.Tensor:
    """x [M, K] (M <= GEMV_ROWS, unit stride along K) times W^T: [M, N] in x's dtype. A K split
    reduces in `ws` (a fresh one when None: a memset per call)."""
    m, k = x.shape
    n = p.n
    cfg = config or gemv_config(m, n, k, p.group)
    per_split, tile_groups = _plan(p, k, cfg.split_k, cfg.block_k, "GEMV")
    if m > GEMV_ROWS or cfg.block_n < 8:
        raise ValueError(f"int4 GEMV: {m} rows (at most {GEMV_ROWS}) with {cfg}")
    if cfg.split_k > 1 and ws is None:
        ws = workspace(n, x.device)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    sums, counts = (ws.sums, ws.counts) if cfg.split_k > 1 else (out, out)
    _int4_gemv_kernel[(m, triton.cdiv(n, cfg.block_n), cfg.split_k)](
        x,
        p.codes,
        p.scales,
        p.bias,
        out,
        sums,
        counts,
        n,
        k // 8,
        k // p.group,
        x.stride(0),
        counts.stride(0),
        per_split,
        cfg.split_k,
        p.plane // 8,
        p.group // p.plane,
        cfg.block_n,
        tile_groups,
        cfg.split_k > 1,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out


def gemm(p: PackedInt4, x: torch.Tensor, config: Optional[GemmConfig] = None) -> torch.Tensor:
    """x [M, K] (half precision or float32, unit stride along K) times W^T: [M, N] in x's dtype."""
    m, k = x.shape
    n = p.n
    cfg = config or gemm_config(m, n, k, p.group)
    per_split, tile_groups = _plan(p, k, cfg.split_k, cfg.block_k, "GEMM")
    out = _out(m, n, cfg.split_k, x)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), cfg.split_k)
    _int4_gemm_kernel[grid](
        x,
        p.codes,
        p.scales,
        p.bias,
        out,
        m,
        n,
        k // 8,
        k // p.group,
        x.stride(0),
        per_split,
        p.plane // 8,
        p.group // p.plane,
        cfg.block_m,
        cfg.block_n,
        tile_groups,
        cfg.split_k > 1,
        "ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out.to(x.dtype)


def matmul(
    p: PackedInt4, ws: Optional[SplitWorkspace], x: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """x [M, K] W^T (+ bias) in x's dtype: the GEMV up to GEMV_ROWS rows (K splits reducing in
    `ws`, see `bind`), else the GEMM."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = gemv(p, x, None, ws) if x.shape[0] <= GEMV_ROWS else gemm(p, x)
    return out if bias is None else out + bias


def bind(p: PackedInt4) -> Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]:
    """(x, bias) -> x W^T + bias for a loaded weight, with its split workspace allocated once."""
    ws = workspace(p.n, p.codes.device) if needs_workspace(p.n, p.k, p.group) else None
    return partial(matmul, p, ws)
