"""Triton paged decode attention: GQA-grouped split-K over the KV pool with a log-sum-exp
reduce (imported only by the Triton backend and the cascade kernel).

Every kernel reads sequence lengths from device tensors (never host values), so decode
launches can be captured in CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from radixlm.kernels.online_softmax import attend_block, attend_blocks, attend_finish, precision_of
from radixlm.kernels.pdl import pdl_enter, pdl_launch, pdl_release, pdl_wait


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    req_to_token_ptr,
    req_idx_ptr,
    seq_lens_ptr,
    starts_ptr,
    out_ptr,
    lse_ptr,
    scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_r2t,
    stride_ot,
    stride_oh,
    stride_os,
    stride_lt,
    stride_lh,
    k_new_ptr,
    v_new_ptr,
    loc_ptr,
    cos_ptr,
    sin_ptr,
    stride_knt,
    stride_knh,
    stride_vnt,
    stride_vnh,
    stride_cos,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_STARTS: tl.constexpr,
    DIRECT: tl.constexpr,
    NEW_KV: tl.constexpr,
    PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program = (request, KV head, split): all GROUP query heads sharing the KV head are
    scored together, so each K/V block is read once per KV head (not once per query head).
    The request's range [starts[b] (0 without HAS_STARTS), seq_len) is cut into NUM_SPLITS
    equal parts. Writes each head's normalized partial output and log-sum-exp for the reduce
    step, or (DIRECT, one split) the output itself in out's dtype.
    With PDL the request's metadata and its first block of slots (seq_lens, req_idx, starts
    and the table: written only by the host or by non-PDL kernels, which completed before any
    PDL kernel after them launched) are read before the wait; q and K/V (written by the
    kernels just before) after it, so the chain of dependent loads after the wait is one deep.
    NEW_KV (a decode step's attention with its rotary and KV store in this launch): q is the
    unrotated query and the request's new token (position seq_len - 1) has its unrotated k and
    its v at k_new / v_new; every program rotates its q heads (neox, cos/sin rows of the
    position), and the program whose split holds the new position rotates k, writes k and v
    into the pool at slot loc[b] (cast as `rope_and_store` does) and, after a barrier, reads
    them back with the rest of its keys. No other program reads that position."""
    if PDL:
        pdl_release()
    b = tl.program_id(0)
    kv_h = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    row = tl.load(req_idx_ptr + b)
    first = 0
    if HAS_STARTS:
        first = tl.load(starts_ptr + b)
    per_split = tl.cdiv(seq_len - first, NUM_SPLITS)
    start = first + split * per_split
    end = tl.minimum(start + per_split, seq_len)
    slots_ptr = req_to_token_ptr + row * stride_r2t
    offs_n = start + tl.arange(0, BLOCK_N)
    mask_n = offs_n < end
    slots = tl.load(slots_ptr + offs_n, mask=mask_n, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    half: tl.constexpr = HEAD_DIM // 2
    partner = tl.where(offs_d < half, offs_d + half, offs_d - half)  # rotate-half's other element
    sign = tl.where(offs_d < half, -1.0, 1.0)
    if NEW_KV:
        loc = tl.load(loc_ptr + b)
        cos = tl.load(cos_ptr + (seq_len - 1) * stride_cos + offs_d % half, mask=mask_d, other=0.0)
        sin = tl.load(sin_ptr + (seq_len - 1) * stride_cos + offs_d % half, mask=mask_d, other=0.0)
    if PDL:
        pdl_wait()
    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < GROUP
    heads = kv_h * GROUP + offs_g
    mask_gd = mask_g[:, None] & mask_d[None, :]
    q_rows = q_ptr + b * stride_qt + heads[:, None] * stride_qh
    q = tl.load(q_rows + offs_d[None, :], mask=mask_gd, other=0.0)
    if NEW_KV:
        q_other = tl.load(q_rows + partner[None, :], mask=mask_gd, other=0.0).to(tl.float32)
        q = (q.to(tl.float32) * cos[None, :] + sign[None, :] * q_other * sin[None, :]).to(q.dtype)
        if (seq_len - 1 - first) // per_split == split:
            k_src = k_new_ptr + b * stride_knt + kv_h * stride_knh
            k_new = tl.load(k_src + offs_d, mask=mask_d, other=0.0)
            k_other = tl.load(k_src + partner, mask=mask_d, other=0.0).to(tl.float32)
            k_rot = (k_new.to(tl.float32) * cos + sign * k_other * sin).to(k_new.dtype)
            v_new = tl.load(v_new_ptr + b * stride_vnt + kv_h * stride_vnh + offs_d, mask=mask_d, other=0.0)
            dst = loc * stride_kt + kv_h * stride_kh + offs_d
            tl.store(k_ptr + dst, k_rot.to(tl.float32).to(k_ptr.dtype.element_ty), mask=mask_d)
            tl.store(v_ptr + dst, v_new.to(tl.float32).to(v_ptr.dtype.element_ty), mask=mask_d)
            tl.debug_barrier()  # the block's other threads read the new K/V back from the pool
    m_i = tl.full([BLOCK_G], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
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
    m_i, l_i, acc = attend_blocks(
        q,
        k_ptr,
        v_ptr,
        slots_ptr,
        start + BLOCK_N,
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
    out, lse = attend_finish(m_i, l_i, acc, end > start)
    tl.store(
        out_ptr + b * stride_ot + heads[:, None] * stride_oh + split * stride_os + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=mask_gd,
    )
    if not DIRECT:
        tl.store(lse_ptr + b * stride_lt + heads * stride_lh + split, lse, mask=mask_g)


@triton.jit
def _decode_reduce_kernel(
    part_ptr,
    lse_ptr,
    out_ptr,
    prefix_lens_ptr,
    stride_pt,
    stride_ph,
    stride_ps,
    stride_lt,
    stride_lh,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    PREFIX_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PDL: tl.constexpr,
):
    """Merge the partials of one (request, head) by their log-sum-exp weights: NUM_SPLITS over the
    request's own range, then PREFIX_SPLITS over its group's shared prefix, read only when
    `prefix_lens[b] > 0` (the prefix slots of an ungrouped request are never written)."""
    if PDL:
        pdl_enter()
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    if PREFIX_SPLITS > 0:  # a bound, not a mask of a scalar: Triton 3.9's interpreter rejects that mask
        limit = tl.where(tl.load(prefix_lens_ptr + b) > 0, NUM_SPLITS + PREFIX_SPLITS, NUM_SPLITS)
        valid = offs_s < limit
    else:
        valid = offs_s < NUM_SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    lse = tl.load(lse_ptr + b * stride_lt + h * stride_lh + offs_s, mask=valid, other=-float("inf"))
    m = tl.max(lse, axis=0)
    w = tl.exp(lse - m)
    w = w / tl.sum(w, axis=0)
    parts = tl.load(
        part_ptr + b * stride_pt + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
        mask=valid[:, None] & mask_d[None, :],
        other=0.0,
    )
    out = tl.sum(parts * w[:, None], axis=0)
    tl.store(out_ptr + b * stride_ot + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


@dataclass
class NewKV:
    """A decode step's new tokens for `decode_attention` to rotate and store itself: unrotated
    k and v [B, Hkv, D] (any strides, last dim contiguous), their slots [B], and the neox
    cos/sin tables [P, D/2] (float32) of the rotary."""

    k: torch.Tensor
    v: torch.Tensor
    loc: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int = 8,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
    new_kv: Optional[NewKV] = None,
) -> torch.Tensor:
    """q [B, H, D] -> out [B, H, D]; each request attends to its whole sequence in the pool.
    One split writes the output directly (one launch); more are merged by the reduce kernel.
    With `new_kv`, q is unrotated and the last token's K/V is not in the pool yet: the split
    kernel rotates q and k at position seq_len - 1 and writes k and v into the pool first
    (`rope_and_store` + this, in one launch; q itself is left unrotated)."""
    part, lse = (torch.empty_like(q), None) if num_splits == 1 else decode_partials(q, num_splits)
    launch_decode_splits(
        q,
        k_buf,
        v_buf,
        req_to_token,
        req_pool_indices,
        seq_lens,
        None,
        part,
        lse,
        scale,
        num_splits,
        block_n,
        num_warps,
        num_stages,
        new_kv,
    )
    return part if lse is None else reduce_partials(part, lse, q, None, num_splits, 0)


DECODE_PROGRAMS = 1024  # split-K target: about 8 programs per SM of an H100/H200
MAX_DECODE_SPLITS = 16


def decode_launch_config(batch: int, kv_heads: int, head_dim: int) -> tuple[int, int]:
    """(splits, block_n) for a plain decode of `batch` requests: split each sequence only as far as
    needed to give the GPU ~DECODE_PROGRAMS programs (at most MAX_DECODE_SPLITS parts), in
    blocks of 8,192 K elements (128 keys of head dim 64, 64 of 96 or 128: a power of two, as
    `tl.arange` needs) at the most splits, else 32 keys. The choice cannot depend on the context
    (a CUDA graph serves every length), so it favours long ones: at batch 1 and 2,048 tokens on an
    H200, 16 parts of 128 keys take 5.8 us per layer against 17.9 for 8 parts of 32, and cost
    little at short contexts (`benchmarks/decode_sweep.py` times each setting per layer,
    `benchmarks/decode_attn_ab.py` in whole decode steps). A request's output thus depends, by
    float rounding only, on the size of the batch it runs in."""
    want = -(-DECODE_PROGRAMS // (batch * kv_heads))
    splits = min(MAX_DECODE_SPLITS, triton.next_power_of_2(max(1, want)))
    if splits < MAX_DECODE_SPLITS:
        return splits, 32
    return splits, max(16, min(128, 8192 // triton.next_power_of_2(head_dim)))


def decode_partials(q: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialized partial outputs [B, H, num_parts, D] and log-sum-exps [B, H, num_parts] (fp32)."""
    batch, heads, dim = q.shape
    part = torch.empty((batch, heads, num_parts, dim), dtype=torch.float32, device=q.device)
    lse = torch.empty((batch, heads, num_parts), dtype=torch.float32, device=q.device)
    return part, lse


def launch_decode_splits(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    starts: torch.Tensor | None,
    part: torch.Tensor,
    lse: torch.Tensor | None,
    scale: float,
    num_splits: int,
    block_n: int,
    num_warps: int = 4,
    num_stages: int = 3,
    new_kv: Optional[NewKV] = None,
) -> None:
    """Fill partials 0..num_splits-1: request b over positions [starts[b] (0 if None), seq_lens[b]).
    With `lse` None (one split only), `part` is the output [B, H, D] itself. `new_kv`: see
    `decode_attention` (not with `starts`; the new token's position is taken as seq_len - 1,
    the decode invariant `build_decode` and the CUDA graph runner keep)."""
    assert new_kv is None or starts is None, "the new token's K/V is stored only by a plain decode"
    batch, heads, dim = q.shape
    group = heads // k_buf.shape[1]
    direct = lse is None
    assert not direct or num_splits == 1, "the output is written directly only by a single split"
    part_strides = (part.stride(0), part.stride(1), 0) if direct else (part.stride(0), part.stride(1), part.stride(2))
    lse_strides = (0, 0) if direct else (lse.stride(0), lse.stride(1))
    _decode_split_kernel[(batch, k_buf.shape[1], num_splits)](
        q,
        k_buf,
        v_buf,
        req_to_token,
        req_pool_indices,
        seq_lens,
        seq_lens if starts is None else starts,
        part,
        part if direct else lse,
        scale,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        req_to_token.stride(0),
        *part_strides,
        *lse_strides,
        *new_kv_args(new_kv, k_buf),
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        HAS_STARTS=starts is not None,
        DIRECT=direct,
        NEW_KV=new_kv is not None,
        PRECISION=precision_of(q),
        num_warps=num_warps,
        num_stages=num_stages,
        **pdl_launch(q, batch),
    )


def new_kv_args(new_kv: Optional[NewKV], k_buf: torch.Tensor) -> tuple:
    """The split kernel's new-token arguments (pointers, then strides); placeholders without."""
    if new_kv is None:
        return (k_buf,) * 5 + (0,) * 5
    k, v = new_kv.k, new_kv.v
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "the new k and v need a contiguous last dim"
    return (
        k,
        v,
        new_kv.loc,
        new_kv.cos,
        new_kv.sin,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        new_kv.cos.stride(0),
    )


def reduce_partials(
    part: torch.Tensor,
    lse: torch.Tensor,
    q: torch.Tensor,
    prefix_lens: torch.Tensor | None,
    num_splits: int,
    prefix_splits: int,
) -> torch.Tensor:
    """out [B, H, D] in q's dtype: the LSE-weighted merge of each row's partials (its prefix
    partials num_splits.. only where `prefix_lens` > 0)."""
    batch, heads, dim = q.shape
    out = torch.empty_like(q)
    _decode_reduce_kernel[(batch, heads)](
        part,
        lse,
        out,
        lse if prefix_lens is None else prefix_lens,
        part.stride(0),
        part.stride(1),
        part.stride(2),
        lse.stride(0),
        lse.stride(1),
        out.stride(0),
        out.stride(1),
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        NUM_SPLITS=num_splits,
        PREFIX_SPLITS=prefix_splits,
        BLOCK_S=triton.next_power_of_2(num_splits + prefix_splits),
        **pdl_launch(q, batch),
    )
    return out
