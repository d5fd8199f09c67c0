"""Triton kernels that fuse the small per-token ops of a decoder layer (GPU fast path only).

Each replaces several eager kernels: RMSNorm (with the residual add), rotary embedding on q
and k in one launch, and SiLU-and-mul. All compute in float32 and store in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.kernels.pdl import pdl_enter, pdl_launch


@triton.jit
def _rmsnorm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    n_cols,
    eps,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        pdl_enter()
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(x_ptr + row * n_cols + offs, mask=mask, other=0.0)
    if HAS_RES:
        x = x + tl.load(res_ptr + row * n_cols + offs, mask=mask, other=0.0)
        tl.store(res_out_ptr + row * n_cols + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / n_cols
    y = (xf * tl.rsqrt(var + eps)).to(x.dtype)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + row * n_cols + offs, w * y, mask=mask)


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of x (or of x + residual, also returned as the new residual). x is [T, N] contiguous."""
    x = x.contiguous()
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else None
    n = x.shape[-1]
    _rmsnorm_kernel[(x.numel() // n,)](
        x,
        residual if residual is not None else x,
        weight,
        out,
        res_out if res_out is not None else out,
        n,
        eps,
        HAS_RES=residual is not None,
        BLOCK=triton.next_power_of_2(n),
        num_warps=4 if n <= 4096 else 8,
        **pdl_launch(x, x.numel() // n),
    )
    return out, res_out


@triton.jit
def _rotate_heads(base, t, stride_t, stride_h, nh, cos, sin, offs_h, offs_d, mask_d, HALF: tl.constexpr):
    mask = (offs_h[:, None] < nh) & mask_d[None, :]
    p1 = base + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(p1, mask=mask, other=0.0)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(p1, (a * cos - b * sin).to(x1.dtype), mask=mask)
    tl.store(p1 + HALF, (b * cos + a * sin).to(x1.dtype), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cos,
    NQ: tl.constexpr,
    NK: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per token: rotate all q heads and k heads (neox half-split layout) in place."""
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HALF
    cos = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=mask_d, other=0.0)[None, :]
    sin = tl.load(sin_ptr + pos * stride_cos + offs_d, mask=mask_d, other=0.0)[None, :]
    offs_h = tl.arange(0, BLOCK_H)
    _rotate_heads(q_ptr, t, stride_qt, stride_qh, NQ, cos, sin, offs_h, offs_d, mask_d, HALF)
    _rotate_heads(k_ptr, t, stride_kt, stride_kh, NK, cos, sin, offs_h, offs_d, mask_d, HALF)


def rotary_inplace(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    """Rotate q [T, H, D] and k [T, Hkv, D] (last dim contiguous) in place; cos/sin are [P, D/2] float32."""
    tokens, nq, dim = q.shape
    nk = k.shape[1]
    _rope_kernel[(tokens,)](
        q,
        k,
        positions,
        cos,
        sin,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos.stride(0),
        NQ=nq,
        NK=nk,
        HALF=dim // 2,
        BLOCK_H=triton.next_power_of_2(max(nq, nk)),
        BLOCK_D=triton.next_power_of_2(dim // 2),
    )


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        pdl_enter()
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < n_cols
    gate = tl.load(x_ptr + row * 2 * n_cols + col, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * n_cols + n_cols + col, mask=mask, other=0.0)
    out = (gate / (1.0 + tl.exp(-gate))).to(up.dtype) * up
    tl.store(out_ptr + row * n_cols + col, out, mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2N] -> [T, N]: SiLU(gate) * up."""
    gate_up = gate_up.contiguous()
    rows, n = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n, block))](gate_up, out, n, BLOCK=block, **pdl_launch(gate_up, rows))
    return out
