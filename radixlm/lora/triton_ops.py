"""Segmented LoRA shrink and expand as Triton kernels (the CUDA path; `ops_torch`'s contract,
except that `shrink` returns split-K partial products that `expand_add` sums).

A program handles one segment's block of BLOCK_M rows and BLOCK_N output columns: it reads the
segment's slot, stops (after the PDL wait) for slot -1 (base rows) or past the segment's end,
and multiplies the rows by that slot's A (shrink) or B (expand). A decode batch's segments are
per slot over a row permutation (`Segments.rows`, see batch_info.py), so its rows of one
adapter share each weight tile load however requests interleave their adapters.

When few row blocks have work (small decode batches) the shrink splits K over SPLIT programs of
one BLOCK_K tile each, each writing a float32 partial product that the expand adds up as it
reads them (deterministic: no atomics, no extra kernel), so no 4096-long dot product runs on a
single program. B is block-diagonal over a fused projection's parts (`layer.py`): an expand
tile reads only the `rank` columns of B and of the shrunk rows of the parts its output columns
fall in (`bounds`: where parts 1 and 2 start), not all P * rank of them.

At decode sizes (`pdl.pdl_enabled`) both kernels are launched with programmatic dependent
launch and keep `radixlm/kernels/pdl.py`'s contract: before the wait they load only the block's
slot and length (written by host copies) and their first A or B tile (weights, written by host
copies when an adapter is loaded), so the weight reads overlap the kernel before them (the base
projection, or the shrink); every program waits before it stores or returns. The grid depends
only on the layout, the slot count, the layer's row count and the shapes, so a decode batch
(static buffers) is captured in a CUDA graph once per batch size. The shrink leaves base rows
unwritten: the expand never reads them. Triton is imported by this module: only CUDA processes
(and the interpreter tests) import it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.kernels.pdl import pdl_launch, pdl_release, pdl_wait
from radixlm.lora.batch_info import BLOCK_ROWS, Segments

BLOCK_M = BLOCK_ROWS  # tl.dot's smallest M; a decode block (grouped layout) is one row block of it
TARGET_PROGRAMS = 264  # enough programs to fill a large GPU twice over (132 SMs on an H100)
MAX_SPLIT = 64  # partial products per row at most: the expand's unrolled sum loads each of them
SPLIT_TILES = (64, 256)  # the K tile of a split program: (smallest, largest)
LOOP_BLOCK_K = 128  # the K tile of an unsplit shrink (a prefill), which loops over all of K


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, s_ptr, starts_ptr, lens_ptr, slots_ptr, rows_ptr,
    K, R, SPLIT, K_PER, stride_x, stride_as, stride_ar, stride_split, stride_s,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    WIDEN: tl.constexpr, INDIRECT: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """s[part] = x[rows, K slice `part`] @ A[slot, cols, K slice]^T; the first A tile is loaded
    before the PDL wait (a split program's only one)."""
    if PDL:
        pdl_release()
    seg, mblock, pid2 = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nblock, part = pid2 // SPLIT, pid2 % SPLIT
    slot = tl.load(slots_ptr + seg)
    length = tl.load(lens_ptr + seg)
    work = (slot >= 0) & (mblock * BLOCK_M < length)
    cols = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < tl.where(work, R, 0)  # no columns (no load) for a program without work
    k_lo = part * K_PER
    k_hi = tl.minimum(k_lo + K_PER, K)
    ks = k_lo + tl.arange(0, BLOCK_K)
    a_tile = a_ptr + tl.maximum(slot, 0) * stride_as + cols[None, :] * stride_ar + ks[:, None]
    a = tl.load(a_tile, mask=col_ok[None, :] & (ks < k_hi)[:, None], other=0.0)
    if PDL:
        pdl_wait()
    if slot < 0 or mblock * BLOCK_M >= length:
        return
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < length
    rows = tl.load(starts_ptr + seg) + rows
    if INDIRECT:
        rows = tl.load(rows_ptr + rows, mask=row_ok, other=0)
    x_tile = x_ptr + rows[:, None] * stride_x + ks[None, :]
    x = tl.load(x_tile, mask=row_ok[:, None] & (ks < k_hi)[None, :], other=0.0)
    acc = _dot_step(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), x, a, PRECISION, WIDEN)
    for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
        k_ok = (k0 + tl.arange(0, BLOCK_K)) < k_hi
        x = tl.load(x_tile + (k0 - k_lo), mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        a = tl.load(a_tile + (k0 - k_lo), mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        acc = _dot_step(acc, x, a, PRECISION, WIDEN)
    ptrs = s_ptr + part * stride_split + rows[:, None] * stride_s + cols[None, :]
    tl.store(ptrs, acc.to(s_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _dot_step(acc, x, a, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    if WIDEN:
        x, a = x.to(tl.float32), a.to(tl.float32)
    return tl.dot(x, a, acc, input_precision=PRECISION)


@triton.jit
def _expand_kernel(
    s_ptr, b_ptr, out_ptr, scales_ptr, starts_ptr, lens_ptr, slots_ptr, rows_ptr,
    N, RANK, BOUND1, BOUND2, stride_split, stride_s, stride_bs, stride_bn, stride_out,
    SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN: tl.constexpr, INDIRECT: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """out[rows, cols] += (sum of s's partials @ B[slot, cols]^T) * scale over the parts the
    column tile covers; the first part's B tile is loaded before the PDL wait."""
    if PDL:
        pdl_release()
    seg, mblock, nblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(slots_ptr + seg)
    length = tl.load(lens_ptr + seg)
    work = (slot >= 0) & (mblock * BLOCK_M < length)
    cols = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < tl.where(work, N, 0)  # no columns (no load) for a program without work
    last = tl.minimum(nblock * BLOCK_N + BLOCK_N, N) - 1
    p_lo = (nblock * BLOCK_N >= BOUND1).to(tl.int32) + (nblock * BLOCK_N >= BOUND2).to(tl.int32)
    p_hi = (last >= BOUND1).to(tl.int32) + (last >= BOUND2).to(tl.int32)
    rs = tl.arange(0, BLOCK_R)
    r_ok = rs < RANK
    b_tile = b_ptr + tl.maximum(slot, 0) * stride_bs + cols[None, :] * stride_bn + rs[:, None]
    b = tl.load(b_tile + p_lo * RANK, mask=col_ok[None, :] & r_ok[:, None], other=0.0)
    if PDL:
        pdl_wait()
    if slot < 0 or mblock * BLOCK_M >= length:
        return
    rows = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < length
    rows = tl.load(starts_ptr + seg) + rows
    if INDIRECT:
        rows = tl.load(rows_ptr + rows, mask=row_ok, other=0)
    s_tile = s_ptr + rows[:, None] * stride_s + rs[None, :]
    s_ok = row_ok[:, None] & r_ok[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _part_product(acc, s_tile + p_lo * RANK, s_ok, b, stride_split, SPLIT, PRECISION, WIDEN)
    for p in range(p_lo + 1, p_hi + 1):  # a tile across a part boundary
        b = tl.load(b_tile + p * RANK, mask=col_ok[None, :] & r_ok[:, None], other=0.0)
        acc = _part_product(acc, s_tile + p * RANK, s_ok, b, stride_split, SPLIT, PRECISION, WIDEN)
    acc = acc * tl.load(scales_ptr + slot)
    ptrs = out_ptr + rows[:, None] * stride_out + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(ptrs, (tl.load(ptrs, mask=mask, other=0.0) + acc).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _part_product(
    acc, s_ptrs, s_ok, b, stride_split, SPLIT: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr
):
    """acc + (the SPLIT partials at `s_ptrs`, summed in order, in B's dtype) @ b; the partial
    loads are unrolled, so they are all in flight at once."""
    s = tl.load(s_ptrs, mask=s_ok, other=0.0).to(tl.float32)
    for i in tl.static_range(1, SPLIT):
        s += tl.load(s_ptrs + i * stride_split, mask=s_ok, other=0.0).to(tl.float32)
    if WIDEN:
        b = b.to(tl.float32)
    else:
        s = s.to(b.dtype)
    return tl.dot(s, b, acc, input_precision=PRECISION)


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


def split_k(seg: Segments, k: int, n_blocks: int) -> tuple[int, int, int]:
    """(SPLIT, K per program, K tile): how the shrink shares one row block's K loop, from a bound
    on the row blocks with work (a function of the layout and row count only: fixed per CUDA
    graph). A segmented batch of long segments (a prefill has blocks enough) does not split;
    else enough programs to fill the GPU, at most MAX_SPLIT, each of one K tile where K allows."""
    unsplit = (1, triton.cdiv(k, LOOP_BLOCK_K) * LOOP_BLOCK_K, LOOP_BLOCK_K)
    if seg.rows is None and seg.max_len > BLOCK_M:
        return unsplit
    want = triton.cdiv(TARGET_PROGRAMS, max(seg.count * n_blocks, 1))
    split = min(want, MAX_SPLIT, triton.cdiv(k, SPLIT_TILES[0]))
    if split <= 1:
        return unsplit
    block_k = min(SPLIT_TILES[1], max(SPLIT_TILES[0], triton.next_power_of_2(triton.cdiv(k, split))))
    k_per = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    return triton.cdiv(k, k_per), k_per, block_k


def shrink(x: torch.Tensor, a: torch.Tensor, seg: Segments) -> torch.Tensor:
    """s [SPLIT, T, R]: split-K partial products whose sum over dim 0 is x @ A[slot]^T on the
    rows of adapter segments (base rows: unspecified, never read by `expand_add`, which adds
    the partials up); SPLIT 1 in x's dtype, else float32. x [T, K] contiguous, A [S, R, K]."""
    t, k, r = x.shape[0], x.shape[1], a.shape[1]
    if seg.count == 0:
        return torch.empty((1, t, r), dtype=x.dtype, device=x.device)
    block_n = max(16, triton.next_power_of_2(min(r, 64)))
    split, k_per, block_k = split_k(seg, k, triton.cdiv(r, block_n))
    out_dtype = x.dtype if split == 1 else torch.float32
    s = torch.empty((split, t, r), dtype=out_dtype, device=x.device)
    precision, widen = _dot_modes(x)
    _shrink_kernel[_grid(seg, r, block_n, split)](
        x, a, s, seg.starts, seg.lens, seg.slots, _rows(seg), k, r, split, k_per,
        x.stride(0), a.stride(0), a.stride(1), s.stride(0), s.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision, WIDEN=widen,
        INDIRECT=seg.rows is not None, **pdl_launch(x, t),
    )  # fmt: skip
    return s


def expand_add(
    out: torch.Tensor,
    s: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    seg: Segments,
    bounds: tuple[int, int] | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """out[rows] += (sum of s's partials [rows] @ B[slot]^T) * scales[slot] per segment, in place;
    s [SPLIT, T, P * rank] from `shrink`, B [S, N, P * rank] block-diagonal: part p's columns
    p * rank .. feed only output columns [bounds[p - 1], bounds[p]) (bounds: where parts 1 and 2
    start, N when absent; None and rank 0: one part, B dense)."""
    if seg.count == 0:
        return out
    n, r = b.shape[1], b.shape[2]
    bounds, rank = bounds or (n, n), rank or r
    assert r % rank == 0 and s.shape[2] == r and out.stride(1) == 1 and b.stride(2) == 1
    block_r = max(16, triton.next_power_of_2(rank))
    precision, widen = _dot_modes(out)
    _expand_kernel[_grid(seg, n, 64)](
        s, b, out, scales, seg.starts, seg.lens, seg.slots, _rows(seg), n, rank, bounds[0], bounds[1],
        s.stride(0), s.stride(1), b.stride(0), b.stride(1), out.stride(0),
        SPLIT=s.shape[0], BLOCK_M=BLOCK_M, BLOCK_N=64, BLOCK_R=block_r, PRECISION=precision, WIDEN=widen,
        INDIRECT=seg.rows is not None, **pdl_launch(out, out.shape[0]),
    )  # fmt: skip
    return out
