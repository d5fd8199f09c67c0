"""Triton paged attention for a speculative verify run as decode rows: the rows of one request
(its last token and its draft tokens, each a decode row with the request's table row and
seq_len = position + 1) are scored together, so each request's K/V is read once per KV head
and split for all its rows, not once per row (imported only by the Triton backend).

Partials and reduce are the split decode's (`decode_attention.py`), and the launch depends on
the number of rows N only (never on how they group), so a decode CUDA graph captured for N rows
serves any grouping of its rows: every program reads the table row of all N rows, finds the
runs (consecutive rows sharing a table row: a request's rows) and takes every P-th run, P =
ceil(N / rows) programs along the first grid axis, so a batch of full draft chains gives one
run per program and no idle ones. Per run, it takes up to `rows` rows at a time (a chunk),
stacks their queries for the KV head's GROUP query heads into one [rows * GROUP, D] tile and
walks the keys of its split once, each query row masked to the keys before its own position
+ 1 (so draft row j sees the prefix and the draft rows up to j). With `NewKV`, each split's
program first rotates the run's new k and stores the new k and v of the rows whose
positions fall into its split (it is the only program that reads them), then attends: no
launch of its own for the KV store.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from radixlm.kernels.decode_attention import NewKV, decode_partials, new_kv_args, reduce_partials
from radixlm.kernels.online_softmax import precision_of
from radixlm.kernels.pdl import pdl_launch, pdl_release, pdl_wait


@triton.jit
def _store_chunk_kv(
    k_ptr,
    v_ptr,
    k_new_ptr,
    v_new_ptr,
    loc_ptr,
    cos_ptr,
    sin_ptr,
    seq_lens_ptr,
    base,
    n,
    start,
    end,
    kv_h,
    stride_kt,
    stride_kh,
    stride_knt,
    stride_knh,
    stride_vnt,
    stride_vnh,
    stride_cos,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Rotate (neox) the new k of the chunk's rows whose position (seq_len - 1) is in [start,
    end) and store it and their v at their slots, cast as `rope_and_store` casts."""
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    half: tl.constexpr = HEAD_DIM // 2
    partner = tl.where(offs_d < half, offs_d + half, offs_d - half)
    sign = tl.where(offs_d < half, -1.0, 1.0)
    rows = base + offs_r
    pos = tl.load(seq_lens_ptr + rows, mask=offs_r < n, other=0) - 1
    mine = (offs_r < n) & (pos >= start) & (pos < end)
    mask = mine[:, None] & (offs_d < HEAD_DIM)[None, :]
    trig = pos[:, None] * stride_cos + (offs_d % half)[None, :]
    cos = tl.load(cos_ptr + trig, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + trig, mask=mask, other=0.0)
    k_src = k_new_ptr + rows[:, None] * stride_knt + kv_h * stride_knh
    k = tl.load(k_src + offs_d[None, :], mask=mask, other=0.0)
    k_other = tl.load(k_src + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    k_rot = (k.to(tl.float32) * cos + sign[None, :] * k_other * sin).to(k.dtype)
    v = tl.load(v_new_ptr + rows[:, None] * stride_vnt + kv_h * stride_vnh + offs_d[None, :], mask=mask, other=0.0)
    loc = tl.load(loc_ptr + rows, mask=mine, other=0)
    dst = loc[:, None] * stride_kt + kv_h * stride_kh + offs_d[None, :]
    tl.store(k_ptr + dst, k_rot.to(tl.float32).to(k_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + dst, v.to(tl.float32).to(v_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attend_rows(
    q,
    k_ptr,
    v_ptr,
    slots_ptr,
    limit,
    start,
    end,
    kv_h,
    scale,
    stride_kt,
    stride_kh,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online softmax of the query rows q [BLOCK_M, BLOCK_D] over the keys at positions
    [start, end) of one table row, query row m seeing only positions < limit[m]. Returns the
    normalized output (fp32) and each row's log-sum-exp; 0 and -inf for a row that sees none."""
    offs_d = tl.arange(0, BLOCK_D)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        slots = tl.load(slots_ptr + offs_n, mask=mask_n, other=0)
        kv_off = slots[:, None] * stride_kt + kv_h * stride_kh + offs_d[None, :]
        kv_mask = mask_n[:, None] & (offs_d < HEAD_DIM)[None, :]
        k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k).to(q.dtype), input_precision=PRECISION).to(tl.float32) * scale
        s = tl.where(mask_n[None, :] & (offs_n[None, :] < limit[:, None]), s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a row with no key yet stays 0
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    has = l_i > 0
    out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), -float("inf"))
    return out, lse


@triton.jit
def _verify_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    req_to_token_ptr,
    req_idx_ptr,
    seq_lens_ptr,
    out_ptr,
    lse_ptr,
    scale,
    num_rows,
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
    CAP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DIRECT: tl.constexpr,
    NEW_KV: tl.constexpr,
    PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (p, kv_h, split) finds the batch's runs (maximal sequences of consecutive rows on
    one table row) from all num_rows rows' table rows, and takes runs p, p + P, p + 2P, ... (P
    programs along axis 0). For each: split `split` of NUM_SPLITS equal parts of [0, the run's
    longest seq_len), first the K/V store of all the run's rows whose positions fall in it
    (NEW_KV), then, per chunk of at most CAP rows, the attention of the chunk's rows x GROUP
    query heads, over the keys of the split up to the chunk's longest seq_len (a CUDA graph's
    padding rows, at position 0 of table row 0, may join the run of a request on that row:
    their chunk reads one key). Writes partials as the decode split kernel does (or, DIRECT, the output), for
    every row of the run. NEW_KV: q is unrotated and is rotated here at each row's position
    seq_len - 1, like the new k. A position is stored and read only by the program of its split."""
    if PDL:
        pdl_release()
    offs_t = tl.arange(0, BLOCK_ROWS)
    inside = offs_t < num_rows
    reqs = tl.load(req_idx_ptr + offs_t, mask=inside, other=-1)
    prevs = tl.load(req_idx_ptr + offs_t - 1, mask=inside & (offs_t > 0), other=-1)
    lens = tl.load(seq_lens_ptr + offs_t, mask=inside, other=0)
    if PDL:
        pdl_wait()
    p = tl.program_id(0)
    kv_h = tl.program_id(1)
    split = tl.program_id(2)
    progs = tl.num_programs(0)
    lead = inside & ((offs_t == 0) | (reqs != prevs))
    rank = tl.cumsum(lead.to(tl.int32), axis=0) - 1  # each leader's run index
    num_runs = tl.sum(lead.to(tl.int32), axis=0)
    offs_m = tl.arange(0, BLOCK_M)
    m_row = offs_m // GROUP
    heads = kv_h * GROUP + offs_m % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    half: tl.constexpr = HEAD_DIM // 2
    partner = tl.where(offs_d < half, offs_d + half, offs_d - half)
    sign = tl.where(offs_d < half, -1.0, 1.0)
    for j in range(0, tl.cdiv(num_runs - p, progs)):
        hit = lead & (rank == p + j * progs)
        r = tl.sum(tl.where(hit, offs_t, 0), axis=0)
        req = tl.sum(tl.where(hit, reqs, 0), axis=0)
        n_run = tl.min(tl.where(lead & (offs_t > r), offs_t, num_rows), axis=0) - r
        span = tl.max(tl.where((offs_t >= r) & (offs_t < r + n_run), lens, 0), axis=0)
        slots_ptr = req_to_token_ptr + req * stride_r2t
        per_split = tl.cdiv(span, NUM_SPLITS)
        start = split * per_split
        end = tl.minimum(start + per_split, span)
        if NEW_KV:  # every row of the run first: a chunk's rows may read any other chunk's
            for c0 in range(0, n_run, CAP):
                _store_chunk_kv(
                    k_ptr,
                    v_ptr,
                    k_new_ptr,
                    v_new_ptr,
                    loc_ptr,
                    cos_ptr,
                    sin_ptr,
                    seq_lens_ptr,
                    r + c0,
                    tl.minimum(n_run - c0, CAP),
                    start,
                    end,
                    kv_h,
                    stride_kt,
                    stride_kh,
                    stride_knt,
                    stride_knh,
                    stride_vnt,
                    stride_vnh,
                    stride_cos,
                    HEAD_DIM,
                    BLOCK_D,
                    BLOCK_R,
                )
            tl.debug_barrier()  # the block's other threads read the new K/V back from the pool
        for c0 in range(0, n_run, CAP):
            base = r + c0
            valid_m = m_row < n_run - c0
            limit = tl.load(seq_lens_ptr + base + m_row, mask=valid_m, other=0)
            mask_md = valid_m[:, None] & mask_d[None, :]
            q_rows = q_ptr + (base + m_row)[:, None] * stride_qt + heads[:, None] * stride_qh
            q = tl.load(q_rows + offs_d[None, :], mask=mask_md, other=0.0)
            if NEW_KV:
                trig = (limit - 1)[:, None] * stride_cos + (offs_d % half)[None, :]
                cos = tl.load(cos_ptr + trig, mask=mask_md, other=0.0)
                sin = tl.load(sin_ptr + trig, mask=mask_md, other=0.0)
                q_other = tl.load(q_rows + partner[None, :], mask=mask_md, other=0.0).to(tl.float32)
                q = (q.to(tl.float32) * cos + sign[None, :] * q_other * sin).to(q.dtype)
            out, lse = _attend_rows(
                q,
                k_ptr,
                v_ptr,
                slots_ptr,
                limit,
                start,
                tl.minimum(end, tl.max(limit, axis=0)),  # no key past the chunk's last row's
                kv_h,
                scale,
                stride_kt,
                stride_kh,
                BLOCK_M,
                HEAD_DIM,
                BLOCK_D,
                BLOCK_N,
                PRECISION,
            )
            dst = (base + m_row)[:, None] * stride_ot + heads[:, None] * stride_oh + split * stride_os
            tl.store(out_ptr + dst + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask_md)
            if not DIRECT:
                tl.store(lse_ptr + (base + m_row) * stride_lt + heads * stride_lh + split, lse, mask=valid_m)


def verify_programs(num_rows: int, rows: int) -> int:
    """Programs per KV head and split: one per request of a batch whose requests all have `rows`
    rows (a verify with full draft chains); a batch with shorter runs deals several to each."""
    return triton.cdiv(num_rows, rows)


def verify_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    rows: int,
    num_splits: int,
    block_n: int,
    new_kv: Optional[NewKV] = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """q [N, H, D] -> out [N, H, D] for decode rows where several consecutive rows may share a
    table row (`req_pool_indices`): row i attends to positions [0, seq_lens[i]) of its table
    row. Invariant: the rows of one request are consecutive in the batch (in any order of
    positions), so each request (a run of rows) is scored by one program per KV head and
    split, `rows` rows at a time (its K/V read once per `rows` rows; `rows` >= 1), the runs
    dealt round-robin to `verify_programs(N, rows)` programs. With `new_kv`, q is unrotated and
    no row's K/V is in the pool yet: each is rotated at position seq_len - 1 and stored before
    any row reads it (q itself is left unrotated)."""
    assert rows >= 1 and num_splits >= 1
    batch, heads, dim = q.shape
    group = heads // k_buf.shape[1]
    part, lse = (torch.empty_like(q), None) if num_splits == 1 else decode_partials(q, num_splits)
    direct = lse is None
    part_strides = (part.stride(0), part.stride(1), 0) if direct else (part.stride(0), part.stride(1), part.stride(2))
    _verify_split_kernel[(verify_programs(batch, rows), k_buf.shape[1], num_splits)](
        q,
        k_buf,
        v_buf,
        req_to_token,
        req_pool_indices,
        seq_lens,
        part,
        part if direct else lse,
        scale,
        batch,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        req_to_token.stride(0),
        *part_strides,
        *((0, 0) if direct else (lse.stride(0), lse.stride(1))),
        *new_kv_args(new_kv, k_buf),
        GROUP=group,
        CAP=rows,
        BLOCK_R=max(2, triton.next_power_of_2(rows)),
        BLOCK_ROWS=max(2, triton.next_power_of_2(batch)),
        BLOCK_M=max(16, triton.next_power_of_2(rows * group)),
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        DIRECT=direct,
        NEW_KV=new_kv is not None,
        PRECISION=precision_of(q),
        num_warps=num_warps,
        num_stages=num_stages,
        **pdl_launch(q, batch),
    )
    return part if direct else reduce_partials(part, lse, q, None, num_splits, 0)
