"""Triton causal prefix-extend attention over the paged KV pool (prefill of new tokens after a
cached prefix; imported only by the Triton backend).

Sequence lengths are read from device tensors, as in the decode kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _extend_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    req_to_token_ptr,
    req_idx_ptr,
    q_start_ptr,
    prefix_lens_ptr,
    ext_lens_ptr,
    scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_r2t,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = (request, query head, block of new tokens). Keys come from the pool (the new
    tokens' K/V were written there first); new token i sees keys at positions <= prefix + i."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    mblk = tl.program_id(2)
    ext = tl.load(ext_lens_ptr + b)
    if mblk * BLOCK_M >= ext:
        return
    prefix = tl.load(prefix_lens_ptr + b)
    q0 = tl.load(q_start_ptr + b)
    row = tl.load(req_idx_ptr + b)
    kv_h = h // GROUP
    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < ext
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + (q0 + offs_m[:, None]) * stride_qt + h * stride_qh + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    q_pos = prefix + offs_m
    kv_end = prefix + tl.minimum((mblk + 1) * BLOCK_M, ext)
    for n0 in range(0, kv_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < kv_end
        slots = tl.load(req_to_token_ptr + row * stride_r2t + offs_n, mask=mask_n, other=0)
        kv_off = slots[:, None] * stride_kt + kv_h * stride_kh + offs_d[None, :]
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k).to(q.dtype), input_precision=PRECISION).to(tl.float32) * scale
        visible = (offs_n[None, :] <= q_pos[:, None]) & mask_n[None, :]
        s = tl.where(visible, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + (q0 + offs_m[:, None]) * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )


def extend_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    q_start: torch.Tensor,
    prefix_lens: torch.Tensor,
    ext_lens: torch.Tensor,
    max_ext: int,
    scale: float,
    block_m: int = 32,
    block_n: int = 32,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """q [T, H, D] (requests concatenated) -> out [T, H, D], causal over prefix + new tokens.
    The tile settings' defaults are Triton's own; `benchmarks/extend_sweep.py` times others."""
    total, heads, dim = q.shape
    group = heads // k_buf.shape[1]
    out = torch.empty_like(q)
    grid = (req_pool_indices.shape[0], heads, triton.cdiv(max_ext, block_m))
    _extend_kernel[grid](
        q,
        k_buf,
        v_buf,
        out,
        req_to_token,
        req_pool_indices,
        q_start,
        prefix_lens,
        ext_lens,
        scale,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        req_to_token.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
        num_stages=num_stages,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fp32 stays exact; tf32 is ignored for bf16
    return out
