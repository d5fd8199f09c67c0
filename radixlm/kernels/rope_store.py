"""Triton kernel: rotary on q and k, and the new tokens' K/V written into the paged pool, in one launch.

Replaces, per layer and step, the rotary kernel and the two `index_put`s of `KVPool.set_kv`
(plus the casts to an fp8 pool). Imported only by the Triton backend.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from radixlm.kernels.pdl import pdl_launch, pdl_release, pdl_wait


@triton.jit
def _rotate(
    x_ptr,
    t,
    stride_t,
    stride_h,
    stride_d,
    cos,
    sin,
    NH: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """Neox half-split rotation of token t's NH heads by the row `cos`, `sin` [1, BLOCK_HALF] of
    its position: (pointer to the first halves, both rotated halves rounded to x's dtype, head
    offsets, half offsets, mask)."""
    offs_d = tl.arange(0, BLOCK_HALF)
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h[:, None] < NH) & (offs_d < HALF)[None, :]
    p1 = x_ptr + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :] * stride_d
    x1 = tl.load(p1, mask=mask, other=0.0)
    x2 = tl.load(p1 + HALF * stride_d, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    return p1, (a * cos - b * sin).to(x1.dtype), (b * cos + a * sin).to(x1.dtype), offs_h, offs_d, mask


@triton.jit
def _to_cache(x, cache_ptr):
    """Round like `tensor.to(cache dtype)` (through float32, exact from any 16-bit float)."""
    return x.to(tl.float32).to(cache_ptr.dtype.element_ty)


@triton.jit
def _copy_heads(
    src_ptr,
    t,
    stride_t,
    stride_h,
    stride_d,
    cache_ptr,
    loc,
    stride_ct,
    stride_ch,
    NH: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NH) & (offs_d[None, :] < HEAD_DIM)
    x = tl.load(src_ptr + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :] * stride_d, mask=mask, other=0.0)
    dst = cache_ptr + loc * stride_ct + offs_h[:, None] * stride_ch + offs_d[None, :]
    tl.store(dst, _to_cache(x, cache_ptr), mask=mask)


@triton.jit
def _rotate_k_into_cache(
    k_ptr,
    t,
    stride_kt,
    stride_kh,
    stride_kd,
    k_cache_ptr,
    loc,
    stride_ct,
    stride_ch,
    cos,
    sin,
    NK: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    K_IN_PLACE: tl.constexpr,
):
    p1, k1, k2, offs_h, offs_d, mask = _rotate(
        k_ptr, t, stride_kt, stride_kh, stride_kd, cos, sin, NK, HALF, BLOCK_HK, BLOCK_HALF
    )
    dst = k_cache_ptr + loc * stride_ct + offs_h[:, None] * stride_ch + offs_d[None, :]
    tl.store(dst, _to_cache(k1, k_cache_ptr), mask=mask)
    tl.store(dst + HALF, _to_cache(k2, k_cache_ptr), mask=mask)
    if K_IN_PLACE:
        tl.store(p1, k1, mask=mask)
        tl.store(p1 + HALF * stride_kd, k2, mask=mask)


@triton.jit
def _rotate_q_in_place(
    q_ptr,
    t,
    stride_qt,
    stride_qh,
    stride_qd,
    cos,
    sin,
    NQ: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    p1, q1, q2, _, _, mask = _rotate(
        q_ptr, t, stride_qt, stride_qh, stride_qd, cos, sin, NQ, HALF, BLOCK_HQ, BLOCK_HALF
    )
    tl.store(p1, q1, mask=mask)
    tl.store(p1 + HALF * stride_qd, q2, mask=mask)


@triton.jit
def _rope_store_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    loc_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_ct,
    stride_ch,
    stride_cos,
    NQ: tl.constexpr,
    NK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ROTATE: tl.constexpr,
    K_IN_PLACE: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (t, role): role 0 rotates token t's q heads in place, role 1 its k heads into the
    K cache at slot loc[t] (only copies them when not ROTATE; with K_IN_PLACE also back into
    k), role 2 copies its v heads into
    the V cache. Values are rounded to the input dtype, then cast to the cache's (as rotary then
    `KVPool.set_kv` do). Each branch's work is its own function: Triton's compiler rejects
    branch-local values of different shapes under one name. With PDL the slot, the position and
    its cos/sin row (written only by the host, plain kernels or at start-up) are read before the
    wait; q, k and v (the projection just before) after it."""
    if PDL:
        pdl_release()
    t = tl.program_id(0)
    role = tl.program_id(1)
    loc = tl.load(loc_ptr + t)
    offs_half = tl.arange(0, BLOCK_HALF)
    if ROTATE:
        pos = tl.load(pos_ptr + t)
        cos = tl.load(cos_ptr + pos * stride_cos + offs_half, mask=offs_half < HALF, other=0.0)[None, :]
        sin = tl.load(sin_ptr + pos * stride_cos + offs_half, mask=offs_half < HALF, other=0.0)[None, :]
    else:
        cos = tl.zeros([1, BLOCK_HALF], tl.float32)
        sin = tl.zeros([1, BLOCK_HALF], tl.float32)
    if PDL:
        pdl_wait()
    if role == 2:
        _copy_heads(
            v_ptr,
            t,
            stride_vt,
            stride_vh,
            stride_vd,
            v_cache_ptr,
            loc,
            stride_ct,
            stride_ch,
            NK,
            HEAD_DIM,
            BLOCK_HK,
            BLOCK_D,
        )
    elif role == 1:
        if ROTATE:
            _rotate_k_into_cache(
                k_ptr,
                t,
                stride_kt,
                stride_kh,
                stride_kd,
                k_cache_ptr,
                loc,
                stride_ct,
                stride_ch,
                cos,
                sin,
                NK,
                HALF,
                BLOCK_HK,
                BLOCK_HALF,
                K_IN_PLACE,
            )
        else:
            _copy_heads(
                k_ptr,
                t,
                stride_kt,
                stride_kh,
                stride_kd,
                k_cache_ptr,
                loc,
                stride_ct,
                stride_ch,
                NK,
                HEAD_DIM,
                BLOCK_HK,
                BLOCK_D,
            )
    elif ROTATE:
        _rotate_q_in_place(q_ptr, t, stride_qt, stride_qh, stride_qd, cos, sin, NQ, HALF, BLOCK_HQ, BLOCK_HALF)


def rope_and_store(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    loc: torch.Tensor,
    positions: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    k_in_place: bool = False,
) -> None:
    """Rotate q [T, H, D] in place and write rotated k and v [T, Hkv, D] (any strides; D even)
    into `k_cache` / `v_cache` [slots, Hkv, D] (last dim contiguous; float or fp8) at slots
    `loc` [T]. cos/sin: the neox tables [P, D/2] float32, row `positions[t]` for token t; both
    None: q and k are already rotated, q is left alone and k and v are only stored.
    k itself is written only with `k_in_place` (and cos/sin): then it is left rotated, rounded
    to its dtype, as the pool holds it when the two dtypes agree."""
    tokens, nq, dim = q.shape
    nk = k.shape[1]
    rotate = cos is not None
    _rope_store_kernel[(tokens, 3)](
        q,
        k,
        v,
        k_cache,
        v_cache,
        loc,
        positions,
        cos if rotate else k_cache,
        sin if rotate else k_cache,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        k_cache.stride(0),
        k_cache.stride(1),
        cos.stride(0) if rotate else 0,
        NQ=nq,
        NK=nk,
        HEAD_DIM=dim,
        HALF=dim // 2,
        BLOCK_HQ=triton.next_power_of_2(nq),
        BLOCK_HK=triton.next_power_of_2(nk),
        BLOCK_HALF=triton.next_power_of_2(max(dim // 2, 1)),
        BLOCK_D=triton.next_power_of_2(dim),
        ROTATE=rotate,
        K_IN_PLACE=k_in_place and rotate,
        **pdl_launch(q, tokens),
    )
