"""Segmented LoRA shrink and expand as Triton kernels (the CUDA path; same contract as `ops_torch`).

A program handles one segment's block of BLOCK_M rows and BLOCK_N output columns: it reads the
segment's slot, returns at once for slot -1 (base rows), and multiplies the rows by that slot's
A (shrink) or B (expand) tile by tile. The grid depends only on the segment count and the
longest segment, so a decode batch (one row per segment, from static buffers) is captured in a
CUDA graph once per batch size. Triton is imported by this module: only CUDA processes (and the
interpreter tests) import it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.lora.batch_info import Segments

BLOCK_M = 16  # tl.dot's smallest M; a decode segment is one row of it


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, s_ptr, starts_ptr, lens_ptr, slots_ptr,
    K, R, stride_x, stride_as, stride_ar, stride_s,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    WIDEN: tl.constexpr,
):  # fmt: skip
    seg, mblock, nblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slots_ptr + seg)
    length = tl.load(lens_ptr + seg)
    if slot < 0 or mblock * BLOCK_M >= length:
        return
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < length
    rows = tl.load(starts_ptr + seg) + rows
    cols = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        a = tl.load(
            a_ptr + slot * stride_as + cols[None, :] * stride_ar + ks[:, None],
            mask=col_ok[None, :] & k_ok[:, None],
            other=0.0,
        )
        if WIDEN:
            x, a = x.to(tl.float32), a.to(tl.float32)
        acc = tl.dot(x, a, acc, input_precision=PRECISION)
    ptrs = s_ptr + rows[:, None] * stride_s + cols[None, :]
    tl.store(ptrs, acc.to(s_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _expand_kernel(
    s_ptr, b_ptr, out_ptr, scales_ptr, starts_ptr, lens_ptr, slots_ptr,
    N, R, stride_s, stride_bs, stride_bn, stride_out,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
    WIDEN: tl.constexpr,
):  # fmt: skip
    seg, mblock, nblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slots_ptr + seg)
    length = tl.load(lens_ptr + seg)
    if slot < 0 or mblock * BLOCK_M >= length:
        return
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < length
    rows = tl.load(starts_ptr + seg) + rows
    cols = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        r_ok = rs < R
        s = tl.load(s_ptr + rows[:, None] * stride_s + rs[None, :], mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        b = tl.load(
            b_ptr + slot * stride_bs + cols[None, :] * stride_bn + rs[:, None],
            mask=col_ok[None, :] & r_ok[:, None],
            other=0.0,
        )
        if WIDEN:
            s, b = s.to(tl.float32), b.to(tl.float32)
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


def _grid(seg: Segments, n: int, block_n: int) -> tuple[int, int, int]:
    return seg.count, triton.cdiv(max(seg.max_len, 1), BLOCK_M), triton.cdiv(n, block_n)


def shrink(x: torch.Tensor, a: torch.Tensor, seg: Segments) -> torch.Tensor:
    """s [T, R] = x @ A[slot]^T per segment (zero on base rows); x [T, K] contiguous, A [S, R, K]."""
    s = torch.zeros((x.shape[0], a.shape[1]), dtype=x.dtype, device=x.device)
    if seg.count == 0:
        return s
    k, r = x.shape[1], a.shape[1]
    block_n = max(16, triton.next_power_of_2(min(r, 64)))
    precision, widen = _dot_modes(x)
    _shrink_kernel[_grid(seg, r, block_n)](
        x, a, s, seg.starts, seg.lens, seg.slots, k, r, x.stride(0), a.stride(0), a.stride(1), s.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=128, PRECISION=precision, WIDEN=widen,
    )  # fmt: skip
    return s


def expand_add(
    out: torch.Tensor, s: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, seg: Segments
) -> torch.Tensor:
    """out[rows] += (s[rows] @ B[slot]^T) * scales[slot] per segment, in place; B [S, N, R]."""
    if seg.count == 0:
        return out
    n, r = b.shape[1], b.shape[2]
    block_r = max(16, triton.next_power_of_2(min(r, 64)))
    precision, widen = _dot_modes(out)
    _expand_kernel[_grid(seg, n, 64)](
        s, b, out, scales, seg.starts, seg.lens, seg.slots, n, r, s.stride(0), b.stride(0), b.stride(1),
        out.stride(0), BLOCK_M=BLOCK_M, BLOCK_N=64, BLOCK_R=block_r, PRECISION=precision, WIDEN=widen,
    )  # fmt: skip
    return out
