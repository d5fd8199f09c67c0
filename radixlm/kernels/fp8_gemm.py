"""FP8 (e4m3) matmuls for the fp8 quantization method, all with float32 accumulation.

* `quantize_groups(x, group)`: activations [M, K] -> e4m3 [M, K] and float32 scales
  [M, ceil(K / group)], one scale per token and group of `group` columns (group = K: per token),
  scale = amax / 448, so x ~= q * scale.
* `block_gemm(xq, xs, w, ws, group, out_dtype)`: y = sum over K-groups of (xq . w) * xs * ws, the
  weight's scales given per output row and K-group ([N, ceil(K / group)]: block-wise checkpoints'
  [N/128, K/128] grid expanded to rows at load, which also serves per-channel scales with group = K).
* `weight_gemv(x, w, ws, group)`: one half-precision row times an e4m3 weight, dequantized in
  registers (no activation quantization: at one row the weight stream is the whole cost).

Shapes: K a multiple of 16; `group` a multiple of the K tile (the kernels read one scale per tile).
"""

from __future__ import annotations

from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def k_tile(group: int, cap: int) -> int:
    """The largest power of two <= cap dividing `group` (at least 16)."""
    tile = cap
    while tile > 16 and group % tile:
        tile //= 2
    if group % tile:
        raise ValueError(f"fp8 scale group {group} is not a multiple of 16")
    return tile


if triton is not None:

    @triton.jit
    def _quant_kernel(x_ptr, q_ptr, s_ptr, K, G, GROUP: tl.constexpr, BLOCK: tl.constexpr):
        """Program (row, group): one scale and GROUP e4m3 values."""
        row = tl.program_id(0).to(tl.int64)
        g = tl.program_id(1)
        idx = tl.arange(0, BLOCK)
        cols = g * GROUP + idx
        mask = (idx < GROUP) & (cols < K)
        x = tl.load(x_ptr + row * K + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / 448.0
        q = tl.clamp(x / scale, -448.0, 448.0)
        tl.store(q_ptr + row * K + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + row * G + g, scale)

    @triton.jit
    def _block_gemm_kernel(
        a_ptr,
        as_ptr,
        b_ptr,
        bs_ptr,
        c_ptr,
        M,
        N,
        K,
        G,
        GROUP: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """C[M, N] = sum_k A[M, k] B[N, k] * as[m, k // GROUP] * bs[n, k // GROUP]."""
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_ok, n_ok = rm < M, rn < N
        a_rows = a_ptr + rm[:, None].to(tl.int64) * K
        b_cols = b_ptr + rn[None, :].to(tl.int64) * K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            a = tl.load(a_rows + k[None, :], mask=m_ok[:, None], other=0.0)
            b = tl.load(b_cols + k[:, None], mask=n_ok[None, :], other=0.0)
            g = k0 // GROUP
            a_s = tl.load(as_ptr + rm * G + g, mask=m_ok, other=0.0)
            b_s = tl.load(bs_ptr + rn * G + g, mask=n_ok, other=0.0)
            acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        c = c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    @triton.jit
    def _weight_gemv_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        b_ptr,
        y_ptr,
        N,
        K,
        G,
        GROUP: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """y[n] = sum_k x[k] w[n, k] s[n, k // GROUP] (+ b[n]) for BLOCK_N rows per program."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_K)
        ok = rows < N
        w_rows = w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :]
        part = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w = tl.load(w_rows + k0, mask=ok[:, None], other=0.0).to(tl.float32)
            x = tl.load(x_ptr + k0 + cols).to(tl.float32)
            s = tl.load(s_ptr + rows * G + k0 // GROUP, mask=ok, other=0.0)
            part += w * x[None, :] * s[:, None]
        acc = tl.sum(part, axis=1)  # one cross-thread reduction per program, not per K tile
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=ok)


def quantize_groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [M, K], float32 scales [M, ceil(K / group)]) of a contiguous [M, K] x."""
    m, k = x.shape
    groups = -(-k // group)
    q = torch.empty((m, k), dtype=FP8, device=x.device)
    s = torch.empty((m, groups), dtype=torch.float32, device=x.device)
    if m:
        _quant_kernel[(m, groups)](x, q, s, k, groups, group, triton.next_power_of_2(group), num_warps=4)
    return q, s


def block_gemm(
    xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, group: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """[M, N] in `out_dtype` of e4m3 xq [M, K] (scales xs [M, G]) and w [N, K] (scales ws [N, G])."""
    m, k = xq.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    block_k = k_tile(group, 128)
    if k % block_k:
        raise ValueError(f"fp8 GEMM: K = {k} is not a multiple of the K tile {block_k}")
    block_m = 16 if m <= 16 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 128))
    _block_gemm_kernel[grid](xq, xs, w, ws, out, m, n, k, ws.shape[1], group, block_m, 128, block_k, num_warps=4)
    return out


def weight_gemv(
    x: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, group: int, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """[1, N] in x's dtype: one contiguous row x [1, K] times e4m3 w [N, K] with scales ws [N, G]."""
    n, k = w.shape
    block_k = k_tile(group, 512)
    if k % block_k:
        raise ValueError(f"fp8 GEMV: K = {k} is not a multiple of the K tile {block_k}")
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    block_n = 8
    _weight_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, ws, w if bias is None else bias, out, n, k, ws.shape[1], group, bias is not None, block_n, block_k
    )
    return out
