"""Triton causal prefix-extend attention over the paged KV pool (prefill of new tokens after a
cached prefix; imported only by the Triton backend).

FlashAttention-2 structure: each program owns a block of new tokens of one query head and
streams its keys in two loops, the keys every row of the block sees (the cached prefix and the
new tokens before the block's first row) without any mask, then the few blocks around the
diagonal with the causal mask. The online softmax runs in base 2 with the scale folded into
one multiplier. Sequence lengths are read from device tensors, as in the decode kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


@dataclass(frozen=True)
class ExtendConfig:
    """Tile and launch settings: `block_m` new tokens per program, `block_n` keys per step."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


SMALL = ExtendConfig(32, 32, 4, 3)  # the CPU interpreter, short extends, fallbacks


def extend_config(
    head_dim: int, dtype: torch.dtype, capability: Optional[tuple[int, int]], max_ext: int
) -> ExtendConfig:
    """Tiles for a launch: Hopper-sized tiles (128 new tokens a program, 8 warps for head dim
    128) for 16-bit long extends on compute capability 9+, mid-sized ones on 8.x, `SMALL` for
    the interpreter (`capability` None), extends shorter than a big block, float32 and head
    dims above 128."""
    wide = dtype in (torch.bfloat16, torch.float16) and head_dim <= 128
    if capability is None or not wide or max_ext < 128:
        return SMALL
    if capability[0] >= 9:
        return ExtendConfig(128, 64, 4 if head_dim <= 64 else 8, 3)
    if capability[0] >= 8:
        return ExtendConfig(64, 64, 4, 3)
    return SMALL


def launch_config(q: torch.Tensor, max_ext: int) -> ExtendConfig:
    """`extend_config` for q [T, H, D] on its device (the interpreter's: no capability)."""
    capability = torch.cuda.get_device_capability(q.device) if q.is_cuda else None
    return extend_config(q.shape[-1], q.dtype, capability, max_ext)


@triton.jit
def _kv_ptrs(k_ptr, v_ptr, slots, offs_d, stride_kt, kv_head_off):
    """K as [D, BLOCK_N] (the second operand of q @ K^T as loaded) and V as [BLOCK_N, D]."""
    k_ptrs = k_ptr + kv_head_off + slots[None, :] * stride_kt + offs_d[:, None]
    v_ptrs = v_ptr + kv_head_off + slots[:, None] * stride_kt + offs_d[None, :]
    return k_ptrs, v_ptrs


@triton.jit
def _attend_blocks(
    acc,
    l_i,
    m_i,
    q,
    k_ptr,
    v_ptr,
    table_row_ptr,
    kv_head_off,
    stride_kt,
    qk_scale,
    lo,
    hi,
    q_pos,
    kv_end,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online softmax over the keys [lo, hi) in BLOCK_N steps. MASKED: keys past a row's
    position or past `kv_end` are dropped (the diagonal blocks); otherwise every key in range
    is visible to every row and nothing is masked. `m_i` is in log2 units (`qk_scale`, softmax
    scale * log2(e) > 0, multiplies the raw scores) and finite after the first step: key 0 is
    visible to every row, and the first step starts there or follows unmasked steps."""
    offs_d = tl.arange(0, BLOCK_D)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if MASKED:
            in_seq = offs_n < kv_end
            slots = tl.load(table_row_ptr + offs_n, mask=in_seq, other=0)
            k_ptrs, v_ptrs = _kv_ptrs(k_ptr, v_ptr, slots, offs_d, stride_kt, kv_head_off)
            k = tl.load(k_ptrs, mask=in_seq[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
        else:
            slots = tl.load(table_row_ptr + offs_n)
            k_ptrs, v_ptrs = _kv_ptrs(k_ptr, v_ptr, slots, offs_d, stride_kt, kv_head_off)
            if HEAD_DIM == BLOCK_D:
                k = tl.load(k_ptrs)
            else:
                k = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
        s = tl.dot(q, k.to(q.dtype), input_precision=PRECISION).to(tl.float32)
        if MASKED:
            s = tl.where((offs_n[None, :] <= q_pos[:, None]) & in_seq[None, :], s, -float("inf"))
            v = tl.load(v_ptrs, mask=in_seq[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        elif HEAD_DIM == BLOCK_D:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])  # one FMA a score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


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
    qk_scale,
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
    """One program = (query head, request, block of new tokens), the last blocks (the most
    keys) launched first. Keys come from the pool (the new tokens' K/V were written there
    first); new token i sees keys at positions <= prefix + i."""
    h = tl.program_id(0)
    b = tl.program_id(1)
    mblk = tl.num_programs(2) - 1 - tl.program_id(2)
    ext = tl.load(ext_lens_ptr + b)
    m0 = mblk * BLOCK_M
    if m0 >= ext:
        return
    prefix = tl.load(prefix_lens_ptr + b)
    q0 = tl.load(q_start_ptr + b)
    row = tl.load(req_idx_ptr + b)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = (offs_m[:, None] < ext) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + (q0 + offs_m[:, None]) * stride_qt + h * stride_qh + offs_d[None, :], mask=io_mask, other=0.0)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table_row_ptr = req_to_token_ptr + row.to(tl.int64) * stride_r2t
    kv_head_off = (h // GROUP) * stride_kh
    q_pos = prefix + offs_m
    full_end = (prefix + m0 + 1) // BLOCK_N * BLOCK_N  # keys [0, full_end): seen by every row
    kv_end = prefix + tl.minimum(m0 + BLOCK_M, ext)
    acc, l_i, m_i = _attend_blocks(
        acc, l_i, m_i, q, k_ptr, v_ptr, table_row_ptr, kv_head_off, stride_kt, qk_scale,
        0, full_end, q_pos, kv_end, HEAD_DIM, BLOCK_D, BLOCK_N, False, PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attend_blocks(
        acc, l_i, m_i, q, k_ptr, v_ptr, table_row_ptr, kv_head_off, stride_kt, qk_scale,
        full_end, kv_end, q_pos, kv_end, HEAD_DIM, BLOCK_D, BLOCK_N, True, PRECISION,
    )  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + (q0 + offs_m[:, None]) * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=io_mask,
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
    config: Optional[ExtendConfig] = None,
) -> torch.Tensor:
    """q [T, H, D] (requests concatenated) -> out [T, H, D], causal over prefix + new tokens.
    `config` None: `launch_config` (by q's head dim, dtype and device). `max_ext` >= every
    `ext_lens` (a request of 0 new tokens writes nothing). float32 runs its dots in IEEE float32."""
    total, heads, dim = q.shape
    config = config or launch_config(q, max_ext)
    group = heads // k_buf.shape[1]
    out = torch.empty_like(q)
    grid = (heads, req_pool_indices.shape[0], triton.cdiv(max_ext, config.block_m))
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
        scale * LOG2_E,
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
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fp32 stays exact; tf32 is ignored for bf16
    return out
