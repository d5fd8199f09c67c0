"""Triton causal prefix-extend attention (prefill of new tokens after a cached prefix; imported
only by the Triton backend).

FlashAttention-2 structure: each program owns a block of new tokens of one query head and
streams its keys in two parts. The cached prefix is gathered from the paged pool through the
request's `req_to_token` row; every new token sees all of it, so only its last partial block is
masked. The new tokens' own keys are read from the chunk's contiguous K/V (`new_k`, `new_v`:
strided row loads, or TMA tensor descriptors) when given, else from the pool like the prefix;
the blocks before the program's diagonal are unmasked and only the diagonal blocks carry the
causal mask. The online softmax runs in base 2 with the scale folded into one multiplier.
Sequence lengths are read from device tensors, as in the decode kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton without host-side tensor descriptors: pointer loads only
    TensorDescriptor = None

LOG2_E = 1.4426950408889634
POOL, ROWS, TMA = 0, 1, 2  # where a key range's K/V come from (`_attend_range`'s SOURCE)


@dataclass(frozen=True)
class ExtendConfig:
    """Tile and launch settings: `block_m` new tokens per program, `block_n` keys per step
    (`block_m` a multiple of `block_n`); `tma`: the new tokens' K/V through tensor descriptors
    where their layout allows it (see `extend_attention`)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False


SMALL = ExtendConfig(32, 32, 4, 3)  # the CPU interpreter, short extends, fallbacks


def extend_config(
    head_dim: int, dtype: torch.dtype, capability: Optional[tuple[int, int]], max_ext: int
) -> ExtendConfig:
    """Tiles for a launch: Hopper-sized tiles (128 new tokens and 64 keys a step, 8 warps for head
    dim 128, 4 up to 64; three stages of K and V fit shared memory; the new tokens' K/V through
    strided loads: the TMA variant is selectable, but its first form failed to compile under Triton 3.6
    and the present one has not run on a GPU yet) for 16-bit long extends on
    compute capability 9+, mid-sized ones on 8.x, `SMALL` for the interpreter (`capability`
    None), extends shorter than a big block, float32 and head dims above 128."""
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
def _load_tile(
    src, rows, n0, col, stride_t, offs_d, row_ok, HEAD_DIM: tl.constexpr, SOURCE: tl.constexpr, MASKED: tl.constexpr
):
    """[BLOCK_N, BLOCK_D] K or V tile: TMA at row `n0` and column `col` of a 2-D descriptor,
    else rows `rows` of the pointer `src` (offset to its head) with stride `stride_t`; rows not
    `row_ok` (MASKED) and columns past HEAD_DIM read as 0 (so a masked key's V adds nothing
    even where the memory behind it is not finite)."""
    if SOURCE == 2:  # every branch is an if/else: no code may follow a descriptor's return
        tile = src.load([n0.to(tl.int32), col])
        if MASKED:  # rows past `end` may be another request's (zeros past the tensor's end)
            tile = tl.where(row_ok[:, None], tile, 0.0)
    else:
        ptrs = src + rows[:, None] * stride_t + offs_d[None, :]
        if MASKED:
            tile = tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        elif HEAD_DIM == offs_d.shape[0]:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def _attend_range(
    acc,
    l_i,
    m_i,
    q,
    k_src,
    v_src,
    table_ptr,
    row0,
    col,
    k_stride,
    v_stride,
    lo,
    hi,
    q_pos,
    end,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SOURCE: tl.constexpr,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online softmax over keys [lo, hi) of one part in BLOCK_N steps. Key n's K/V: SOURCE
    POOL, pool slot `table_ptr[n]` (k_src/v_src point at the KV head); ROWS, row `row0 + n`
    of the contiguous new K/V (likewise; rows `k_stride` / `v_stride` apart); TMA, row
    `row0 + n` and column `col` of descriptors.
    MASKED: key n is visible to row i iff n <= q_pos[i] and n < end; otherwise every key in
    range is visible to every row and nothing is masked. `m_i` is in log2 units (`qk_scale`,
    softmax scale * log2(e) > 0, multiplies the raw scores) and finite after the first step
    of a row's first part (a key visible to every row comes first)."""
    offs_d = tl.arange(0, BLOCK_D)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        row_ok = offs_n < end
        if SOURCE == 0:
            if MASKED:
                rows = tl.load(table_ptr + offs_n, mask=row_ok, other=0)
            else:
                rows = tl.load(table_ptr + offs_n)
        else:
            rows = row0 + offs_n
        k = _load_tile(k_src, rows, row0 + n0, col, k_stride, offs_d, row_ok, HEAD_DIM, SOURCE, MASKED)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION)
        if MASKED:
            s = tl.where((offs_n[None, :] <= q_pos[:, None]) & row_ok[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])  # one FMA a score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load_tile(v_src, rows, row0 + n0, col, v_stride, offs_d, row_ok, HEAD_DIM, SOURCE, MASKED)
        acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _extend_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    new_k,
    new_v,
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
    stride_nkt,
    stride_nkh,
    stride_nvt,
    stride_nvh,
    stride_r2t,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NEW_SOURCE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = (query head, request, block of new tokens), the last blocks (the most
    keys) launched first. New token i sees the whole prefix and the new keys j <= i."""
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
    kvh = h // GROUP
    k_pool, v_pool = k_ptr + kvh * stride_kh, v_ptr + kvh * stride_kh
    # The cached prefix: keys [0, prefix), all visible; only a last partial block is masked.
    full = prefix // BLOCK_N * BLOCK_N
    q_abs = offs_m + prefix
    acc, l_i, m_i = _attend_range(
        acc, l_i, m_i, q, k_pool, v_pool, table_row_ptr, 0, 0, stride_kt, stride_kt, 0, full, q_abs, prefix,
        qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, 0, False, PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attend_range(
        acc, l_i, m_i, q, k_pool, v_pool, table_row_ptr, 0, 0, stride_kt, stride_kt, full, prefix, q_abs, prefix,
        qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, 0, True, PRECISION,
    )  # fmt: skip
    # The new tokens: keys [0, m0) are before every row of the block; the diagonal is masked.
    if NEW_SOURCE == 0:
        k_new, v_new, col, nkt, nvt = k_pool, v_pool, 0, stride_kt, stride_kt
    elif NEW_SOURCE == 1:
        k_new, v_new, col = new_k + kvh * stride_nkh, new_v + kvh * stride_nvh, 0
        nkt, nvt = stride_nkt, stride_nvt
    else:
        k_new, v_new, col, nkt, nvt = new_k, new_v, kvh * HEAD_DIM, 0, 0
    new_table = table_row_ptr + prefix
    diag = m0 // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attend_range(
        acc, l_i, m_i, q, k_new, v_new, new_table, q0, col, nkt, nvt, 0, diag, offs_m, ext,
        qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, NEW_SOURCE, False, PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attend_range(
        acc, l_i, m_i, q, k_new, v_new, new_table, q0, col, nkt, nvt, diag, tl.minimum(m0 + BLOCK_M, ext), offs_m,
        ext, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, NEW_SOURCE, True, PRECISION,
    )  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + (q0 + offs_m[:, None]) * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=io_mask,
    )


def _new_kv_source(
    new_k: Optional[torch.Tensor], new_v: Optional[torch.Tensor], config: ExtendConfig
) -> tuple[int, object, object]:
    """(NEW_SOURCE, K argument, V argument) for the new tokens' keys: POOL without `new_k`;
    TMA descriptors over the [T, Hkv * D] view when `config.tma` (and this Triton has them),
    the head dim is a power of two, heads are adjacent (stride D) and the rows 16-byte aligned;
    else ROWS (pointers)."""
    if new_k is None or new_v is None:
        return POOL, None, None
    dim = new_k.shape[-1]
    if config.tma and TensorDescriptor is not None and _tma_ok(new_k) and _tma_ok(new_v):
        descs = [
            TensorDescriptor(x, [x.shape[0], x.shape[1] * dim], [x.stride(0), 1], [config.block_n, dim])
            for x in (new_k, new_v)
        ]
        return TMA, descs[0], descs[1]
    return ROWS, new_k, new_v


def _tma_ok(x: torch.Tensor) -> bool:
    """Whether x [T, Hkv, D] can back a 2-D tensor descriptor of [block_n, D] tiles."""
    dim, size = x.shape[-1], x.element_size()
    return (
        dim == triton.next_power_of_2(dim)
        and x.stride(2) == 1
        and x.stride(1) == dim
        and (x.stride(0) * size) % 16 == 0
        and x.data_ptr() % 16 == 0
        and x.shape[0] > 0
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
    new_k: Optional[torch.Tensor] = None,
    new_v: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """q [T, H, D] (requests concatenated) -> out [T, H, D], causal over prefix + new tokens.
    The pool (k_buf, v_buf [slots, Hkv, D]) must hold every request's prefix at its table row's
    first `prefix_lens` slots; `new_k`, `new_v` [T, Hkv, D] (any token and head strides, last
    dim contiguous, rows in q's order): the new tokens' K/V exactly as stored in the pool
    (already rotated, in the pool's dtype), read from there instead; without them the new
    tokens' K/V must be in the pool too. `config` None: `launch_config` (by q's head dim, dtype
    and device). `max_ext` >= every `ext_lens` (a request of 0 new tokens writes nothing).
    float32 runs its dots in IEEE float32."""
    total, heads, dim = q.shape
    config = config or launch_config(q, max_ext)
    group = heads // k_buf.shape[1]
    out = torch.empty_like(q)
    source, k_new, v_new = _new_kv_source(new_k, new_v, config)
    strides = (0,) * 4 if source == POOL else (*new_k.stride()[:2], *new_v.stride()[:2])
    grid = (heads, req_pool_indices.shape[0], triton.cdiv(max_ext, config.block_m))
    _extend_kernel[grid](
        q,
        k_buf,
        v_buf,
        k_buf if source == POOL else k_new,
        v_buf if source == POOL else v_new,
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
        *strides,
        req_to_token.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        NEW_SOURCE=source,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fp32 stays exact; tf32 is ignored for bf16
    return out
