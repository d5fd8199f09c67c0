"""Batch-1 int4 GEMV over K-major words: GPTQ's stored form and Q4_K repacked (`q4k_kmajor`).

The host side: launch configs (`TUNED`, else the rules of `gptq_config` / `q4k_config`), the
choice of the inline-PTX or portable unpack (`use_asm`), argument checks, K-split workspaces and
the matmuls layers bind (`bind_gptq`, `bind_q4k`: the GEMV for few rows, a GEMM beyond). The
kernels, and how they unpack and scale the codes, are in `int4_kmajor_kernel.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import torch

from radixlm.kernels.int4_packed import GEMV_ROWS, SMS, SplitWorkspace, workspace
from radixlm.layers.quantization.q4k_kmajor import GROUP, Q4KMajor

try:
    import triton

    from radixlm.kernels.int4_kmajor_kernel import _gptq_gemv_kernel, _q4k_gemm_kernel, _q4k_gemv_kernel
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class KMajorConfig:
    """Launch shape: BLOCK_N outputs x `block_w` word rows (8 block_w elements) per tile, K split
    over `split_k` programs, Triton's `num_warps`. Q4_K tiles are always 16 rows (one layout tile)."""

    block_n: int = 128
    block_w: int = 16
    split_k: int = 1
    num_warps: int = 4


def use_asm(x: torch.Tensor) -> bool:
    """The PTX path: compiled CUDA (not the interpreter) with half-precision activations."""
    return x.is_cuda and not _INTERPRETED and x.dtype in (torch.float16, torch.bfloat16)


# Batch-1 launches measured best by `benchmarks/int4_gemv_sweep.py` ("best kmajor" per shape):
# (kind, N, K) -> config, kind "gptq" (group 128) or "q4k"; other shapes take the rules below.
TUNED: Mapping[tuple[str, int, int], KMajorConfig] = MappingProxyType({})


def _split(tiles: int, k_tiles: int, programs: int, min_tiles: int) -> int:
    """K splits (a power of two dividing the K tiles): doubled while there are fewer than
    `programs` programs and each split keeps at least `min_tiles` tiles."""
    split = 1
    while tiles * split < programs and k_tiles % (split * 2) == 0 and k_tiles // (split * 2) >= min_tiles:
        split *= 2
    return split


def gptq_config(m: int, n: int, k: int, group: int) -> KMajorConfig:
    """`TUNED`'s for one row at a measured shape; else tiles of 64 outputs x up to 128 elements
    inside one group, 4 warps (no layout conversion in the K loop: `benchmarks/int4_gemv_sass.py
    --kmajor`), K split to ~4 programs per SM, each split at least two tiles."""
    if m == 1 and group == 128 and ("gptq", n, k) in TUNED:
        return TUNED[("gptq", n, k)]
    block_w = 16
    while block_w > 2 and (group % (8 * block_w) or k % (8 * block_w)):
        block_w //= 2
    if group % (8 * block_w) or k % (8 * block_w):
        raise ValueError(f"int4 GEMV: K = {k} and group {group} need a common tile of at least 16")
    return KMajorConfig(64, block_w, _split(m * -(-n // 64), k // (8 * block_w), 4 * SMS, 2), 4)


def q4k_config(m: int, n: int, k: int) -> KMajorConfig:
    """`TUNED`'s for one row at a measured shape; else one group (4 word rows) x 256 outputs per
    tile, 2 warps (each thread 4 rows x 4 outputs: a group's scales decoded once per output, no
    layout conversion in the K loop), K split to ~8 programs per SM, each split at least four
    groups."""
    if m == 1 and ("q4k", n, k) in TUNED:
        return TUNED[("q4k", n, k)]
    return KMajorConfig(256, 4, _split(m * -(-n // 256), k // GROUP, 8 * SMS, 4), 2)


def _buffers(
    m: int, n: int, x: torch.Tensor, cfg: KMajorConfig, ws: Optional[SplitWorkspace]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if m > GEMV_ROWS:
        raise ValueError(f"int4 GEMV: {m} rows (at most {GEMV_ROWS})")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if cfg.split_k == 1:
        return out, out, out
    ws = ws or workspace(n, x.device)
    return out, ws.sums, ws.counts


def gptq_gemv(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group: int,
    x: torch.Tensor,
    config: Optional[KMajorConfig] = None,
    ws: Optional[SplitWorkspace] = None,
    asm: Optional[bool] = None,
) -> torch.Tensor:
    """x [M, K] (M <= GEMV_ROWS, unit stride along K) times GPTQ's stored weight (`int4.py`:
    qweight [K/8, N], true zero points qzeros [K/g, N/8], scales [K/g, N]): [M, N] in x's dtype.
    `asm` None: `use_asm(x)`. A K split reduces in `ws` (a fresh one when None)."""
    m, k = x.shape
    n = qweight.shape[1]
    cfg = config or gptq_config(m, n, k, group)
    tile = 8 * cfg.block_w
    if group % tile or k % (tile * cfg.split_k):
        raise ValueError(f"int4 GEMV: K {k} / group {group} do not split {cfg.split_k} ways into tiles of {tile}")
    out, sums, counts = _buffers(m, n, x, cfg, ws)
    _gptq_gemv_kernel[(m, triton.cdiv(n, cfg.block_n), cfg.split_k)](
        x,
        qweight,
        qzeros,
        scales,
        out,
        sums,
        counts,
        n,
        x.stride(0),
        counts.stride(0),
        k // cfg.split_k,
        cfg.split_k,
        group,
        cfg.block_n,
        cfg.block_w,
        cfg.split_k > 1,
        use_asm(x) if asm is None else asm,
        num_warps=cfg.num_warps,
    )
    return out


def q4k_gemv(
    p: Q4KMajor,
    x: torch.Tensor,
    config: Optional[KMajorConfig] = None,
    ws: Optional[SplitWorkspace] = None,
    asm: Optional[bool] = None,
) -> torch.Tensor:
    """x [M, K] (M <= GEMV_ROWS, unit stride along K) times a repacked Q4_K weight: [M, N] in x's dtype."""
    m, k = x.shape
    cfg = config or q4k_config(m, p.n, k)
    if k != p.k or (k // GROUP) % cfg.split_k:
        raise ValueError(f"Q4_K GEMV: K {k} (weight {p.k}) does not split {cfg.split_k} ways into groups of {GROUP}")
    out, sums, counts = _buffers(m, p.n, x, cfg, ws)
    _q4k_gemv_kernel[(m, triton.cdiv(p.n, cfg.block_n), cfg.split_k)](
        x,
        p.codes,
        p.scale_min,
        p.d_dmin,
        out,
        sums,
        counts,
        p.n,
        x.stride(0),
        counts.stride(0),
        k // cfg.split_k,
        cfg.split_k,
        cfg.block_n,
        cfg.split_k > 1,
        use_asm(x) if asm is None else asm,
        num_warps=cfg.num_warps,
    )
    return out


def needs_workspace(configs: Callable[[int], KMajorConfig]) -> bool:
    """Whether some batch of up to GEMV_ROWS rows splits K (`configs`: rows -> launch)."""
    return any(configs(m).split_k > 1 for m in range(1, GEMV_ROWS + 1))


def q4k_gemm(p: Q4KMajor, x: torch.Tensor, block_m: int = 32, block_n: int = 64) -> torch.Tensor:
    """x [M, K] (half precision or float32, unit stride along K) times a repacked Q4_K weight
    with tensor cores (each group decoded to x's dtype): [M, N] in x's dtype."""
    m, k = x.shape
    if k != p.k:
        raise ValueError(f"Q4_K GEMM: K {k}, weight {p.k}")
    out = torch.empty((m, p.n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(p.n, block_n))
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    _q4k_gemm_kernel[grid](
        x, p.codes, p.scale_min, p.d_dmin, out, m, p.n, k, x.stride(0), block_m, block_n, precision, num_warps=4
    )
    return out


def _q4k_matmul(
    p: Q4KMajor, ws: Optional[SplitWorkspace], x: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = q4k_gemv(p, x, None, ws) if x.shape[0] <= GEMV_ROWS else q4k_gemm(p, x)
    return out if bias is None else out + bias


def bind_q4k(p: Q4KMajor) -> Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]:
    """(x, bias) -> x W^T + bias for a repacked Q4_K weight: the GEMV up to GEMV_ROWS rows (its K
    split workspace allocated once, here), the GEMM beyond."""
    split = needs_workspace(lambda m: q4k_config(m, p.n, p.k))
    return partial(_q4k_matmul, p, workspace(p.n, p.codes.device) if split else None)


def _gptq_matmul(
    weight: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int],
    ws: Optional[SplitWorkspace],
    x: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    from radixlm.kernels.int4_gemm import w4a16_matmul

    if x.shape[0] != 1 or x.stride(-1) != 1:
        return w4a16_matmul(*weight, x, bias)
    out = gptq_gemv(*weight, x, None, ws)
    return out if bias is None else out + bias


def bind_gptq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int
) -> Callable[..., torch.Tensor]:
    """(x, bias) -> x W^T + bias for GPTQ's stored form (`int4.py`): one row through this GEMV
    (K split workspace allocated once, here), more through `int4_gemm.w4a16_matmul`."""
    n, k = qweight.shape[1], qweight.shape[0] * 8
    split = gptq_config(1, n, k, group).split_k > 1
    ws = workspace(n, qweight.device) if split else None
    return partial(_gptq_matmul, (qweight, qzeros, scales, group), ws)
