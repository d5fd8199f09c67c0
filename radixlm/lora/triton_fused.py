"""The LoRA term of a small decode batch in ONE Triton launch per projection: shrink, expand,
scale and the add into the base output, fused (the CUDA path for grouped batches of few rows).

At decode the shrink / expand pair costs two launches and a dependency per projection while
moving almost no bytes; here program (block, n-tile) recomputes its block's x·A (A is R x K,
small) and multiplies it by its N-tile of B, so no intermediate leaves the program and nothing
else is launched. B is block-diagonal over the fused parts (q/k/v, gate/up: `layer.py`), so a
tile only needs the A rows of the parts its columns fall in: `bounds` are the local output
offsets where parts 1 and 2 start (N when absent), and a tile inside one part reads one R x K
slice of A rather than all P of them.

Invariants: the blocks are the grouped layout's (`batch_info`): at most BLOCK_ROWS rows of one
slot each, slot -1 for an unused block (its programs return at once); rows of no block (base
rows) keep `out` as it is; the grid depends only on the block bound and N, so a CUDA graph
captured once replays for any adapters. The shrunk rows are rounded to the weights' dtype
before the expand, as the two-kernel path and the torch reference do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.lora.batch_info import BLOCK_ROWS, Segments
from radixlm.lora.triton_ops import _dot_modes

MAX_PARTS = 3  # q/k/v: the most parts a fused projection has


@triton.jit
def _fused_kernel(
    x_ptr, a_ptr, b_ptr, out_ptr, scales_ptr, starts_ptr, lens_ptr, slots_ptr, rows_ptr,
    K, N, R, BOUND1, BOUND2, stride_x, stride_as, stride_ar, stride_bs, stride_bn, stride_out,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    blk, nblock = tl.program_id(0), tl.program_id(1)
    slot = tl.load(slots_ptr + blk)
    length = tl.load(lens_ptr + blk)
    if slot < 0 or length <= 0:
        return
    m = tl.arange(0, BLOCK_M)
    row_ok = m < length
    rows = tl.load(rows_ptr + tl.load(starts_ptr + blk) + m, mask=row_ok, other=0)
    cols = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    first = nblock * BLOCK_N
    last = tl.minimum(first + BLOCK_N, N) - 1
    p_lo = (first >= BOUND1).to(tl.int32) + (first >= BOUND2).to(tl.int32)
    p_hi = (last >= BOUND1).to(tl.int32) + (last >= BOUND2).to(tl.int32)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p in range(p_lo, p_hi + 1):
        rs = p * R + r
        s = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            x = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            a = tl.load(
                a_ptr + slot * stride_as + rs[None, :] * stride_ar + ks[:, None],
                mask=r_ok[None, :] & k_ok[:, None],
                other=0.0,
            )
            if WIDEN:
                x, a = x.to(tl.float32), a.to(tl.float32)
            s = tl.dot(x, a, s, input_precision=PRECISION)
        b = tl.load(
            b_ptr + slot * stride_bs + cols[None, :] * stride_bn + rs[:, None],
            mask=col_ok[None, :] & r_ok[:, None],
            other=0.0,
        )
        s = s.to(b_ptr.dtype.element_ty)  # the shrunk rows in the weights' dtype, as the reference
        if WIDEN:
            s, b = s.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(s, b, acc, input_precision=PRECISION)
    acc = acc * tl.load(scales_ptr + slot)
    ptrs = out_ptr + rows[:, None] * stride_out + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(ptrs, (tl.load(ptrs, mask=mask, other=0.0) + acc).to(out_ptr.dtype.element_ty), mask=mask)


def block_n_for(n: int) -> int:
    """Output columns per program: wide tiles, since each program re-reads its parts' A."""
    return max(16, min(256 if n > 8192 else 128, triton.next_power_of_2(n)))


def block_k_for(k: int) -> int:
    """K elements per loop step: a program's time is its A read (R x K, one program per N tile,
    no split-K here), so a long K (down_proj) takes bigger steps, more bytes in flight per step.
    A first guess from that reasoning, not yet tuned on a GPU (lora_kernel_bench compares)."""
    return 512 if k > 8192 else 256


def fused_add(
    out: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    seg: Segments,
    bounds: tuple[int, int],
    rank: int,
    block_n: int = 0,
    block_k: int = 0,
) -> torch.Tensor:
    """out[rows] += ((x[rows] @ A[slot]^T) @ B[slot]^T) * scales[slot] over the grouped blocks of
    `seg` (rows given by `seg.rows`), in place; A [S, P*rank, K], B [S, N, P*rank] block-diagonal
    with part p at columns p*rank.. and output rows [bounds[p-1], bounds[p]) (see module doc);
    `block_n`, `block_k` (0: `block_n_for`, `block_k_for`): the tile sizes (lora_kernel_bench
    tries others)."""
    assert seg.rows is not None and seg.max_len <= BLOCK_ROWS, "the fused path takes the grouped layout"
    assert x.stride(1) == 1 and out.stride(1) == 1 and a.stride(2) == 1 and b.stride(2) == 1
    if seg.count == 0:
        return out
    k, n = x.shape[1], out.shape[1]
    block_n, block_k = block_n or block_n_for(n), block_k or block_k_for(k)
    precision, widen = _dot_modes(x)
    _fused_kernel[(seg.count, triton.cdiv(n, block_n))](
        x, a, b, out, scales, seg.starts, seg.lens, seg.slots, seg.rows, k, n, rank, bounds[0], bounds[1],
        x.stride(0), a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
        BLOCK_M=BLOCK_ROWS, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=max(16, triton.next_power_of_2(rank)),
        PRECISION=precision, WIDEN=widen,
    )  # fmt: skip
    return out
