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
from types import MappingProxyType
from typing import Mapping, Optional

import torch

from radixlm.layers.quantization.packed_int4 import PackedInt4

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
        N,
        K,
        stride_xm,
        groups_per_split,
        GW: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_G: tl.constexpr,
        ATOMIC: tl.constexpr,
    ):
        row, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        group: tl.constexpr = GW * 8
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rn_safe = tl.where(n_ok, rn, 0).to(tl.int64)  # ragged rows read row 0, stored masked
        rg = tl.arange(0, BLOCK_G)
        rw = tl.arange(0, GW)
        n_groups = K // group
        w_off = rn_safe[:, None, None] * (K // 8) + rg[None, :, None] * GW + rw[None, None, :]
        s_off = rn_safe[:, None] * n_groups + rg[None, :]
        x_row = x_ptr + row.to(tl.int64) * stride_xm + rg[:, None] * group + rw[None, :]  # [BG, GW]
        acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
        g_first = pid_k * groups_per_split
        for g0 in range(g_first, g_first + groups_per_split, BLOCK_G):
            words = tl.load(w_ptr + w_off + g0 * GW)
            s = tl.load(s_ptr + s_off + g0).to(tl.float32)
            b = tl.load(b_ptr + s_off + g0).to(tl.float32)
            xg = x_row + g0 * group
            dots = tl.zeros((BLOCK_N, BLOCK_G, GW), dtype=tl.float32)
            xs = tl.zeros((BLOCK_G, GW), dtype=tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(xg + i * GW).to(tl.float32)
                dots += _plane(words, i) * xi[None, :, :]
                xs += xi
            x_sum = tl.sum(xs, axis=1)[None, :]  # [1, BG]
            acc += (16.0 * s) * (tl.sum(dots, axis=2) - x_sum) + b * x_sum
        y = tl.sum(acc, axis=1)
        out = y_ptr + row.to(tl.int64) * N + rn
        if ATOMIC:
            tl.atomic_add(out, y, mask=n_ok)
        else:
            tl.store(out, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.jit
    def _int4_gemm_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        b_ptr,
        y_ptr,
        M,
        N,
        K,
        stride_xm,
        groups_per_split,
        GW: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_G: tl.constexpr,
        ATOMIC: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        group: tl.constexpr = GW * 8
        block_k: tl.constexpr = BLOCK_G * group
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = rm < M, rn < N
        rn_safe = tl.where(n_ok, rn, 0).to(tl.int64)
        rg = tl.arange(0, BLOCK_G)
        rw = tl.arange(0, GW)
        rk = tl.arange(0, block_k)
        shifts = (tl.arange(0, 8) * 4)[None, None, :, None]
        n_groups = K // group
        w_off = rn_safe[:, None, None] * (K // 8) + rg[None, :, None] * GW + rw[None, None, :]
        s_off = rn_safe[:, None] * n_groups + rg[None, :]
        x_off = rm[:, None].to(tl.int64) * stride_xm + rk[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        g_first = pid_k * groups_per_split
        for g0 in range(g_first, g_first + groups_per_split, BLOCK_G):
            x = tl.load(x_ptr + x_off + g0 * group, mask=m_ok[:, None], other=0.0)
            words = tl.load(w_ptr + w_off + g0 * GW)  # [BN, BG, GW]
            s = tl.load(s_ptr + s_off + g0).to(tl.float32)[:, :, None, None]
            b = tl.load(b_ptr + s_off + g0).to(tl.float32)[:, :, None, None]
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
TUNED: Mapping[tuple[int, int, int], GemvConfig] = MappingProxyType({})


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
    """The GEMV launch: `TUNED`'s for one row at a measured shape; else 16 rows x 512 elements per
    tile, 8 rows when N is small, and K split while there are fewer than ~3 programs per SM (each
    split keeping at least two tiles)."""
    if m == 1 and (n, k, group) in TUNED:
        return TUNED[(n, k, group)]
    block_n = 16 if n >= 3 * SMS * 16 else 8
    block_k = 512
    split = _split(m * -(-n // block_n), k // group, _tile_groups(block_k, group, k // group), 3 * SMS, 2)
    return GemvConfig(block_n, block_k, split, num_warps=4 if block_n >= 16 else 2)


def gemm_config(m: int, n: int, k: int, group: int) -> GemmConfig:
    """Default GEMM launch (tensor cores, K tile of 128 or less when the group is smaller)."""
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 64 if m <= 32 else 128
    tiles = -(-m // block_m) * -(-n // block_n)
    split = _split(tiles, k // group, _tile_groups(128, group, k // group), 2 * SMS, 4)
    return GemmConfig(block_m, block_n, 128, split)


def _out(m: int, n: int, split: int, x: torch.Tensor) -> torch.Tensor:
    if split == 1:
        return torch.empty((m, n), dtype=x.dtype, device=x.device)
    return torch.zeros((m, n), dtype=torch.float32, device=x.device)


def gemv(p: PackedInt4, x: torch.Tensor, config: Optional[GemvConfig] = None) -> torch.Tensor:
    """x [M, K] (unit stride along K; M small) times W^T: [M, N] in x's dtype."""
    m, k = x.shape
    n, group = p.n, p.group
    cfg = config or gemv_config(m, n, k, group)
    groups_per_split = k // group // cfg.split_k
    if k % group or (k // group) % cfg.split_k:
        raise ValueError(f"int4 GEMV: K {k}, group {group} and split {cfg.split_k} do not split K into whole groups")
    tile_groups = _tile_groups(cfg.block_k, group, groups_per_split)
    out = _out(m, n, cfg.split_k, x)
    grid = (m, triton.cdiv(n, cfg.block_n), cfg.split_k)
    _int4_gemv_kernel[grid](
        x,
        p.codes,
        p.scales,
        p.bias,
        out,
        n,
        k,
        x.stride(0),
        groups_per_split,
        group // 8,
        cfg.block_n,
        tile_groups,
        cfg.split_k > 1,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out.to(x.dtype)


def gemm(p: PackedInt4, x: torch.Tensor, config: Optional[GemmConfig] = None) -> torch.Tensor:
    """x [M, K] (half precision or float32, unit stride along K) times W^T: [M, N] in x's dtype."""
    m, k = x.shape
    n, group = p.n, p.group
    cfg = config or gemm_config(m, n, k, group)
    groups_per_split = k // group // cfg.split_k
    if k % group or (k // group) % cfg.split_k:
        raise ValueError(f"int4 GEMM: K {k}, group {group} and split {cfg.split_k} do not split K into whole groups")
    tile_groups = _tile_groups(cfg.block_k, group, groups_per_split)
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
        k,
        x.stride(0),
        groups_per_split,
        group // 8,
        cfg.block_m,
        cfg.block_n,
        tile_groups,
        cfg.split_k > 1,
        "ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out.to(x.dtype)


def matmul(p: PackedInt4, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] W^T (+ bias) in x's dtype: the GEMV up to GEMV_ROWS rows, else the GEMM."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = gemv(p, x) if x.shape[0] <= GEMV_ROWS else gemm(p, x)
    return out if bias is None else out + bias
