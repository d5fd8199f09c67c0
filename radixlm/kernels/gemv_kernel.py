"""The Triton GEMV kernel behind `radixlm.kernels.gemv` (imported only once a CUDA row takes it,
so CPU processes never load Triton). See `gemv.py` for the contract and the measured rates."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from radixlm.kernels.pdl import pdl_launch, pdl_release, pdl_wait


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    N,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program = BLOCK_N output rows over all of K (K % BLOCK_K == 0); fp32 accumulation.
    The first weight tile is loaded before the PDL wait (no kernel writes weights), so with
    PDL the weight stream starts while the kernels before this one finish."""
    if PDL:
        pdl_release()
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    w_tile = w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :]
    w = tl.load(w_tile, mask=row_ok[:, None], other=0.0)
    if PDL:
        pdl_wait()
    acc = w.to(tl.float32) * tl.load(x_ptr + cols).to(tl.float32)[None, :]
    for k in range(BLOCK_K, K, BLOCK_K):
        w = tl.load(w_tile + k, mask=row_ok[:, None], other=0.0)
        x = tl.load(x_ptr + k + cols)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def gemv_into(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    out: torch.Tensor,
    config: tuple[int, int, int],
) -> torch.Tensor:
    """out[1, N] = x[1, K] @ w[N, K]^T (+ bias) with `config` = (rows per program, K tile,
    warps); the K tile must divide K (`radixlm.kernels.gemv.gemv_into` checks and defaults it)."""
    n, k = w.shape
    block_n, block_k, warps = config
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x,
        w,
        w if bias is None else bias,
        out,
        n,
        k,
        bias is not None,
        block_n,
        block_k,
        num_warps=warps,
        **pdl_launch(x, 1),
    )
    return out
