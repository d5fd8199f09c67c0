"""Segmented LoRA shrink and expand as Triton kernels (the CUDA path; `ops_torch`'s contract,
except that `shrink` returns split-K partial products that `expand_add` sums).

A program handles one segment's block of BLOCK_M rows and BLOCK_N output columns: it reads the
segment's slot, returns at once for slot -1 (base rows) or past the segment's end, and
multiplies the rows by that slot's A (shrink) or B (expand) tile by tile. A decode batch's
segments are per slot over a row permutation (`Segments.rows`, see batch_info.py), so its rows
of one adapter share each weight tile load however requests interleave their adapters.

When few row blocks have work (small decode batches) the shrink also splits K over SPLIT
programs, each writing a float32 partial product that the expand adds up as it reads them
(deterministic: no atomics, no extra kernel), so one row block's long K loop does not run on a
single program. The grid depends only on the layout, the slot count, the layer's row count and
the shapes, so a decode batch (static buffers) is captured in a CUDA graph once per batch size.
The shrink leaves base rows unwritten: the expand never reads them. Triton is imported by this
module: only CUDA processes (and the interpreter tests) import it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.lora.batch_info import BLOCK_ROWS, Segments

BLOCK_M = BLOCK_ROWS  # tl.dot's smallest M; a decode block (grouped layout) is one row block of it
K_PER_SPLIT = 256  # K elements per program of a split shrink (two BLOCK_K tiles)
TARGET_PROGRAMS = 264  # enough programs to fill a large GPU twice over (132 SMs on an H100)


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, s_ptr, starts_ptr, lens_ptr, slots_ptr, rows_ptr,
    K, R, SPLIT, K_PER, stride_x, stride_as, stride_ar, stride_split, stride_s,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    WIDEN: tl.constexpr, INDIRECT: tl.constexpr,
):  # fmt: skip
    seg, mblock, pid2 = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nblock, part = pid2 // SPLIT, pid2 % SPLIT
    slot = tl.load(slots_ptr + seg)
    length = tl.load(lens_ptr + seg)
    if slot < 0 or mblock * BLOCK_M >= length:
        return
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < length
    rows = tl.load(starts_ptr + seg) + rows
    if INDIRECT:
        rows = tl.load(rows_ptr + rows, mask=row_ok, other=0)
    cols = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_lo = part * K_PER
    k_hi = tl.minimum(k_lo + K_PER, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_hi
        x = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        a = tl.load(
            a_ptr + slot * stride_as + cols[None, :] * stride_ar + ks[:, None],
            mask=col_ok[None, :] & k_ok[:, None],
            other=0.0,
        )
        if WIDEN:
            x, a = x.to(tl.float32), a.to(tl.float32)
        acc = tl.dot(x, a, acc, input_precision=PRECISION)
    ptrs = s_ptr + part * stride_split + rows[:, None] * stride_s + cols[None, :]
    tl.store(ptrs, acc.to(s_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _expand_kernel(
    s_ptr, b_ptr, out_ptr, scales_ptr, starts_ptr, lens_ptr, slots_ptr, rows_ptr,
    N, R, SPLIT, stride_split, stride_s, stride_bs, stride_bn, stride_out,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
    WIDEN: tl.constexpr, INDIRECT: tl.constexpr,
):  # fmt: skip
    seg, mblock, nblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slots_ptr + seg)
    length = tl.load(lens_ptr + seg)
    if slot < 0 or mblock * BLOCK_M >= length:
        return
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < length
    rows = tl.load(starts_ptr + seg) + rows
    if INDIRECT:
        rows = tl.load(rows_ptr + rows, mask=row_ok, other=0)
    cols = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        r_ok = rs < R
        s_ptrs = s_ptr + rows[:, None] * stride_s + rs[None, :]
        s_ok = row_ok[:, None] & r_ok[None, :]
        s = tl.load(s_ptrs, mask=s_ok, other=0.0).to(tl.float32)
        for part in range(1, SPLIT):  # the shrink's split-K partial products
            s += tl.load(s_ptrs + part * stride_split, mask=s_ok, other=0.0).to(tl.float32)
        b = tl.load(
            b_ptr + slot * stride_bs + cols[None, :] * stride_bn + rs[:, None],
            mask=col_ok[None, :] & r_ok[:, None],
            other=0.0,
        )
        if WIDEN:
            b = b.to(tl.float32)
        else:
            s = s.to(b.dtype)
        acc = tl.dot(s, b, acc, input_precision=PRECISION)
    acc = acc * tl.load(scales_ptr + slot)
    ptrs = out_ptr + rows[:, None] * stride_out + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(ptrs, (tl.load(ptrs, mask=mask, other=0.0) + acc).to(out_ptr.dtype.element_ty), mask=mask)


def _dot_modes(x: torch.Tensor) -> tuple[str, bool]:
    """(input precision, widen): float32 multiplies in full precision (a LoRA term in tf32 would
    differ from the float32 reference); Triton's interpreter multiplies bf16 dot operands as raw
    16-bit integers, so on the CPU they are widened first."""
    return ("ieee" if x.dtype == torch.float32 else "tf32"), (x.device.type == "cpu" and x.dtype == torch.bfloat16)


def _rows(seg: Segments) -> torch.Tensor:
    """The row permutation of a grouped layout; a direct one passes any tensor (never read)."""
    return seg.rows if seg.rows is not None else seg.starts


def _grid(seg: Segments, n: int, block_n: int, split: int = 1) -> tuple[int, int, int]:
    return seg.count, triton.cdiv(max(seg.max_len, 1), BLOCK_M), triton.cdiv(n, block_n) * split


def split_k(seg: Segments, k: int, n_blocks: int) -> int:
    """How many programs share one row block's K loop, from a bound on the row blocks with work
    (a function of the layout and row count only: fixed per CUDA graph): 1 for a segmented
    batch of long segments (a prefill has blocks enough), else enough to fill the GPU."""
    if seg.rows is None:
        if seg.max_len > BLOCK_M:
            return 1
        busy = seg.count
    else:  # grouped: blocks of at most BLOCK_M rows, seg.count of them at most
        busy = seg.count
    want = triton.cdiv(TARGET_PROGRAMS, max(busy * n_blocks, 1))
    return max(1, min(want, triton.cdiv(k, K_PER_SPLIT)))


def shrink(x: torch.Tensor, a: torch.Tensor, seg: Segments) -> torch.Tensor:
    """s [SPLIT, T, R]: split-K partial products whose sum over dim 0 is x @ A[slot]^T on the
    rows of adapter segments (base rows: unspecified, never read by `expand_add`, which adds
    the partials up); SPLIT 1 in x's dtype, else float32. x [T, K] contiguous, A [S, R, K]."""
    t, k, r = x.shape[0], x.shape[1], a.shape[1]
    if seg.count == 0:
        return torch.empty((1, t, r), dtype=x.dtype, device=x.device)
    block_n = max(16, triton.next_power_of_2(min(r, 64)))
    split = split_k(seg, k, triton.cdiv(r, block_n))
    out_dtype = x.dtype if split == 1 else torch.float32
    s = torch.empty((split, t, r), dtype=out_dtype, device=x.device)
    precision, widen = _dot_modes(x)
    _shrink_kernel[_grid(seg, r, block_n, split)](
        x, a, s, seg.starts, seg.lens, seg.slots, _rows(seg), k, r, split, triton.cdiv(k, split * 128) * 128,
        x.stride(0), a.stride(0), a.stride(1), s.stride(0), s.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=128, PRECISION=precision, WIDEN=widen,
        INDIRECT=seg.rows is not None,
    )  # fmt: skip
    return s


def expand_add(
    out: torch.Tensor, s: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, seg: Segments
) -> torch.Tensor:
    """out[rows] += (sum of s's partials [rows] @ B[slot]^T) * scales[slot] per segment, in place;
    s [SPLIT, T, R] from `shrink`, B [S, N, R]."""
    if seg.count == 0:
        return out
    n, r = b.shape[1], b.shape[2]
    block_r = max(16, triton.next_power_of_2(min(r, 64)))
    precision, widen = _dot_modes(out)
    _expand_kernel[_grid(seg, n, 64)](
        s, b, out, scales, seg.starts, seg.lens, seg.slots, _rows(seg), n, r, s.shape[0], s.stride(0),
        s.stride(1), b.stride(0), b.stride(1), out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=64, BLOCK_R=block_r, PRECISION=precision, WIDEN=widen, INDIRECT=seg.rows is not None,
    )  # fmt: skip
    return out
