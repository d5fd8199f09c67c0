"""Online-softmax building blocks shared by the paged attention kernels: one block of keys
folded into a running (max, sum, accumulator) state, a range of blocks read through the
request-to-token table, and the final normalisation.

Layout: k/v buffers are [num_slots, num_kv_heads, head_dim]; `req_to_token[row, pos]` is the
slot of token `pos` of the request in `row`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def attend_block(
    q,
    k_ptr,
    v_ptr,
    slots,
    offs_n,
    mask_n,
    kv_h,
    scale,
    stride_kt,
    stride_kh,
    m_i,
    l_i,
    acc,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One online-softmax step of the query rows q over the keys at `slots` (positions `offs_n`,
    valid where `mask_n`): returns the updated running max, sum and unnormalized output."""
    offs_d = tl.arange(0, BLOCK_D)
    kv_off = slots[:, None] * stride_kt + kv_h * stride_kh + offs_d[None, :]
    kv_mask = mask_n[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k).to(q.dtype), input_precision=PRECISION).to(tl.float32) * scale
    s = tl.where(mask_n[None, :], s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION).to(tl.float32)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc


@triton.jit
def attend_finish(m_i, l_i, acc, has):
    """The normalized output and log-sum-exp of an online softmax; 0 and -inf where `has` is false."""
    out = tl.where(has, acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), -float("inf"))
    return out, lse


@triton.jit
def attend_range(
    q,
    k_ptr,
    v_ptr,
    slots_ptr,
    start,
    end,
    kv_h,
    scale,
    stride_kt,
    stride_kh,
    ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Attention of the query rows q [ROWS, BLOCK_D] to the keys at positions [start, end) of one
    table row (`slots_ptr` points at its position 0), KV head `kv_h`, by online softmax. Returns
    the normalized output [ROWS, BLOCK_D] (fp32) and each row's log-sum-exp; 0 and -inf when
    the range is empty. K/V are cast to q's dtype after loading (fp8 pools)."""
    m_i = tl.full([ROWS], -float("inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    m_i, l_i, acc = attend_blocks(
        q,
        k_ptr,
        v_ptr,
        slots_ptr,
        start,
        end,
        kv_h,
        scale,
        stride_kt,
        stride_kh,
        m_i,
        l_i,
        acc,
        HEAD_DIM,
        BLOCK_D,
        BLOCK_N,
        PRECISION,
    )
    return attend_finish(m_i, l_i, acc, end > start)


@triton.jit
def attend_blocks(
    q,
    k_ptr,
    v_ptr,
    slots_ptr,
    start,
    end,
    kv_h,
    scale,
    stride_kt,
    stride_kh,
    m_i,
    l_i,
    acc,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """`attend_block` over the keys at positions [start, end) of one table row, BLOCK_N at a
    time, from the online-softmax state (m_i, l_i, acc); returns the updated state."""
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        slots = tl.load(slots_ptr + offs_n, mask=mask_n, other=0)
        m_i, l_i, acc = attend_block(
            q,
            k_ptr,
            v_ptr,
            slots,
            offs_n,
            mask_n,
            kv_h,
            scale,
            stride_kt,
            stride_kh,
            m_i,
            l_i,
            acc,
            HEAD_DIM,
            BLOCK_D,
            PRECISION,
        )
    return m_i, l_i, acc


def precision_of(q: torch.Tensor) -> str:
    """tl.dot's input precision: fp32 stays exact ("ieee"); "tf32" is ignored for 16-bit inputs."""
    return "ieee" if q.dtype == torch.float32 else "tf32"
