"""Triton shared-prefix ("cascade") decode: a group's common prefix is attended once for all members.

Requests of a decode batch that share a prefix (same KV slots; see `shared_prefix.py`) would each
re-read that prefix's K/V. Here the prefix kernel reads each block of it once per (group, KV
head) and scores it against every member's query heads with matrix-shaped `tl.dot`s (like
prefill); the split kernel attends each request's own suffix, from its prefix length on; the
reduce merges both kinds of partials by log-sum-exp. Lengths and groups come from device
tensors only, so the launches can be captured in CUDA graphs. Imported only by the Triton backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.attention.shared_prefix import MAX_GROUPS, SharedPrefixPlan
from radixlm.kernels.decode_attention import decode_partials, launch_decode_splits, reduce_partials
from radixlm.kernels.online_softmax import attend_range, precision_of


@triton.jit
def _prefix_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    req_to_token_ptr,
    groups_ptr,
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
    MAX_GROUPS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FIRST_PART: tl.constexpr,
    PREFIX_SPLITS: tl.constexpr,
    MEMBER_PROGS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = (group, KV head, prefix split x member stride). Rows of a block are
    (member, query head of this KV head) pairs, BLOCK_R // GROUP members per block; the program
    takes member blocks mprog, mprog + MEMBER_PROGS, ... and attends each to its split of the
    prefix, writing partial FIRST_PART + split of every member. Empty groups exit at once."""
    g = tl.program_id(0)
    kv_h = tl.program_id(1)
    split = tl.program_id(2) % PREFIX_SPLITS
    mprog = tl.program_id(2) // PREFIX_SPLITS
    first = tl.load(groups_ptr + g)
    count = tl.load(groups_ptr + g + 1) - first
    if count == 0:
        return
    row = tl.load(groups_ptr + MAX_GROUPS + 1 + g)
    length = tl.load(groups_ptr + 2 * MAX_GROUPS + 1 + g)
    per_split = tl.cdiv(length, PREFIX_SPLITS)
    start = split * per_split
    end = tl.minimum(start + per_split, length)
    per_block: tl.constexpr = BLOCK_R // GROUP
    offs_r = tl.arange(0, BLOCK_R)
    local = offs_r // GROUP
    heads = kv_h * GROUP + offs_r % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    members_ptr = groups_ptr + 3 * MAX_GROUPS + 1 + first
    for mb in range(mprog, tl.cdiv(count, per_block), MEMBER_PROGS):
        idx = mb * per_block + local
        mask_r = (local < per_block) & (idx < count)
        b = tl.load(members_ptr + idx, mask=mask_r, other=0)
        q = tl.load(
            q_ptr + b[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
            mask=mask_r[:, None] & mask_d[None, :],
            other=0.0,
        )
        out, lse = attend_range(
            q,
            k_ptr,
            v_ptr,
            req_to_token_ptr + row * stride_r2t,
            start,
            end,
            kv_h,
            scale,
            stride_kt,
            stride_kh,
            BLOCK_R,
            HEAD_DIM,
            BLOCK_D,
            BLOCK_N,
            PRECISION,
        )
        part = FIRST_PART + split
        tl.store(
            out_ptr + b[:, None] * stride_ot + heads[:, None] * stride_oh + part * stride_os + offs_d[None, :],
            out,
            mask=mask_r[:, None] & mask_d[None, :],
        )
        tl.store(lse_ptr + b * stride_lt + heads * stride_lh + part, lse, mask=mask_r)


def cascade_decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    plan: SharedPrefixPlan,
    scale: float,
    suffix_splits: int = 4,
    prefix_splits: int = 4,
    member_progs: int = 2,
    block_r: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
) -> torch.Tensor:
    """q [B, H, D] -> out [B, H, D], equal (up to float rounding) to `decode_attention`: each
    request attends to its whole sequence, its group's shared prefix through the prefix kernel
    (grid: `plan.num_groups` x KV heads x prefix_splits * member_progs) and the rest through
    the split kernel (suffix_splits parts from `plan.prefix_lens`). `member_progs` programs share
    a group's member blocks of `block_r` rows; `block_n` keys per step (both kernels)."""
    batch, heads, dim = q.shape
    kv_heads = k_buf.shape[1]
    group = heads // kv_heads
    part, lse = decode_partials(q, suffix_splits + prefix_splits)
    launch_decode_splits(
        q,
        k_buf,
        v_buf,
        req_to_token,
        req_pool_indices,
        seq_lens,
        plan.prefix_lens,
        part,
        lse,
        scale,
        suffix_splits,
        block_n,
    )
    _prefix_kernel[(plan.num_groups, kv_heads, prefix_splits * member_progs)](
        q,
        k_buf,
        v_buf,
        req_to_token,
        plan.groups,
        part,
        lse,
        scale,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        req_to_token.stride(0),
        part.stride(0),
        part.stride(1),
        part.stride(2),
        lse.stride(0),
        lse.stride(1),
        MAX_GROUPS=MAX_GROUPS,
        GROUP=group,
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_R=max(block_r, triton.next_power_of_2(group)),
        BLOCK_N=block_n,
        FIRST_PART=suffix_splits,
        PREFIX_SPLITS=prefix_splits,
        MEMBER_PROGS=member_progs,
        PRECISION=precision_of(q),
        num_warps=num_warps,
    )
    return reduce_partials(part, lse, q, plan.prefix_lens, suffix_splits, prefix_splits)
