"""W4A16 matrix-vector product for decode rows: the int4 weight streamed once, no tensor cores.

Same weight layout as `int4_gemm` (`qweight` int32 [K/8, N] with nibble i of word (r, n) =
W^T[8r + i, n]; `qzeros` int32 [K/g, N/8]; `scales` [K/g, N]). A program owns BLOCK_N outputs
of one row and a K range of whole tiles; a K tile of BLOCK_K = 8 * BLOCK_W values lies inside
one quantization group, so per tile

    sum_k x[k] (q[k, n] - z[n]) s[n] = s[n] (sum_k x[k] q[k, n] - z[n] sum_k x[k]).

Each nibble plane i of the [BLOCK_W, BLOCK_N] word tile meets the strided activations
x[8r + i]; the products accumulate in float32, the zero point and scale are applied per tile
elementwise, and the sum over K's rows runs once at the end. Unlike the `tl.dot` kernel there
is no shuffle of the unpacked weights into a tensor-core layout. K is split over SPLIT_K
programs that add their float32 partial sums atomically.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

_TARGET_PROGRAMS = 528  # about four per SM on an H100 (132 SMs)


if triton is not None:

    @triton.jit
    def _w4a16_gemv_kernel(
        x_ptr,
        qw_ptr,
        qz_ptr,
        s_ptr,
        y_ptr,
        N,
        K,
        stride_xm,
        GROUP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_W: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        row, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rw = tl.arange(0, BLOCK_W)
        n_ok = rn < N
        z_shift = (rn % 8) * 4
        x_row = x_ptr + row.to(tl.int64) * stride_xm
        acc = tl.zeros((BLOCK_W, BLOCK_N), dtype=tl.float32)
        k_per_split = K // SPLIT_K
        for k0 in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_W * 8):
            words = tl.load(
                qw_ptr + (k0 // 8 + rw)[:, None].to(tl.int64) * N + rn[None, :], mask=n_ok[None, :], other=0
            )
            part = tl.zeros((BLOCK_W, BLOCK_N), dtype=tl.float32)
            x_sum = tl.zeros((BLOCK_W,), dtype=tl.float32)
            for i in tl.static_range(8):
                xi = tl.load(x_row + k0 + rw * 8 + i).to(tl.float32)
                part += xi[:, None] * ((words >> (4 * i)) & 0xF).to(tl.float32)
                x_sum += xi
            g = k0 // GROUP
            s = tl.load(s_ptr + g * N + rn, mask=n_ok, other=0.0).to(tl.float32)
            z = ((tl.load(qz_ptr + g * (N // 8) + rn // 8, mask=n_ok, other=0) >> z_shift) & 0xF).to(tl.float32)
            acc += (part - z[None, :] * x_sum[:, None]) * s[None, :]
        y = tl.sum(acc, axis=0)  # one cross-thread reduction per program, not per K tile
        out = y_ptr + row.to(tl.int64) * N + rn
        if SPLIT_K == 1:
            tl.store(out, y.to(y_ptr.dtype.element_ty), mask=n_ok)
        else:
            tl.atomic_add(out, y, mask=n_ok)


def plan_gemv(m: int, n: int, k: int, group: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_W, SPLIT_K): the K tile (8 * BLOCK_W) divides the group and K; K is split
    while there are fewer than ~4 programs per SM and each split keeps at least two tiles."""
    block_n = 128 if n >= 128 else 64
    block_k = 128
    while block_k > 16 and (group % block_k or k % block_k):
        block_k //= 2
    if group % block_k or k % block_k:
        raise ValueError(f"int4 GEMV: K = {k} and group {group} need a common tile of at least 16")
    tiles = m * -(-n // block_n)
    split = 1
    while tiles * split * 2 <= _TARGET_PROGRAMS and k % (block_k * split * 2) == 0 and k // (split * 2) >= 2 * block_k:
        split *= 2
    return block_n, block_k // 8, split


def w4a16_gemv(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int, x: torch.Tensor
) -> torch.Tensor:
    """x [M, K] (few rows, unit stride along K) times the int4 weight: [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[1]
    block_n, block_w, split = plan_gemv(m, n, k, group)
    if split == 1:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        out = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    grid = (m, triton.cdiv(n, block_n), split)
    _w4a16_gemv_kernel[grid](
        x, qweight, qzeros, scales, out, n, k, x.stride(0), group, block_n, block_w, split, num_warps=4
    )
    return out.to(x.dtype)
