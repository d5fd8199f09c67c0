"""W4A16 matmul with the 4-bit weight dequantized in registers (AWQ and GPTQ share it).

Weight layout (see `layers/quantization/int4.py`): `qweight` int32 [K/8, N], nibble i of word
(r, n) is W^T[8r + i, n]; `qzeros` int32 [K/g, N/8], nibble i of word (j, c) is the zero point of
output 8c + i in group j; `scales` [K/g, N]; W^T[k, n] = (q - z[k // g, n]) * s[k // g, n].

One kernel for every batch size: tiles of BLOCK_M rows x BLOCK_N outputs, K walked in tiles of
BLOCK_K (which divides g, so one scale and zero row per tile), `tl.dot` accumulating in float32
(float32 inputs multiply in IEEE precision, not TF32). Few rows leave
too few output tiles to fill the GPU, so K is then split over SPLIT_K programs that add their
float32 partial sums atomically (a zeroed float32 buffer, cast at the end).
"""

from __future__ import annotations

from typing import Optional

import torch

from radixlm.kernels.int4_gemv import w4a16_gemv

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

_TARGET_PROGRAMS = 264  # about two per SM on an H100 (132 SMs)
GEMV_ROWS = 1  # batches of at most this many rows take the GEMV kernel (`int4_gemv`)


if triton is not None:

    @triton.jit
    def _w4a16_kernel(
        x_ptr,
        qw_ptr,
        qz_ptr,
        s_ptr,
        y_ptr,
        M,
        N,
        K,
        stride_xm,
        GROUP: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        rw = tl.arange(0, BLOCK_K // 8)
        m_ok, n_ok = rm < M, rn < N
        shifts = tl.arange(0, 8) * 4
        z_shift = (rn % 8) * 4
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_per_split = K // SPLIT_K
        for k0 in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_K):
            k = k0 + rk
            x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + k[None, :], mask=m_ok[:, None], other=0.0)
            # each word once ([BLOCK_K / 8, BLOCK_N]), its 8 nibbles spread to rows 8r .. 8r + 7
            words = tl.load(
                qw_ptr + (k0 // 8 + rw)[:, None].to(tl.int64) * N + rn[None, :], mask=n_ok[None, :], other=0
            )
            q = tl.reshape((words[:, None, :] >> shifts[None, :, None]) & 0xF, (BLOCK_K, BLOCK_N))
            g = k0 // GROUP
            s = tl.load(s_ptr + g * N + rn, mask=n_ok, other=0.0).to(tl.float32)
            zw = tl.load(qz_ptr + g * (N // 8) + rn // 8, mask=n_ok, other=0)
            z = (zw >> z_shift) & 0xF
            w = ((q - z[None, :]).to(tl.float32) * s[None, :]).to(x.dtype)
            acc += tl.dot(x, w, input_precision=PRECISION)
        out = y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        mask = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(out, acc, mask=mask)


def plan(m: int, n: int, k: int, group: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K) for an [m, k] x [k, n] product: the K tile divides the
    group (and K); K is split while there are fewer than ~2 programs per SM and the split divides K
    into whole tiles."""
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 64 if m <= 16 else 128
    block_k = 128
    while block_k > 16 and (group % block_k or k % block_k):
        block_k //= 2
    tiles = -(-m // block_m) * -(-n // block_n)
    split = 1
    while tiles * split * 2 <= _TARGET_PROGRAMS and k % (block_k * split * 2) == 0 and k // (split * 2) >= 4 * block_k:
        split *= 2
    return block_m, block_n, block_k, split


def w4a16_matmul(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group: int,
    x: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """x [M, K] (half precision or float32, unit stride along K) times the int4 weight: [M, N] in
    x's dtype (+ bias); single rows go through the GEMV kernel."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    n = qweight.shape[1]
    if m <= GEMV_ROWS:
        out = w4a16_gemv(qweight, qzeros, scales, group, x)
        return out if bias is None else out + bias
    block_m, block_n, block_k, split = plan(m, n, k, group)
    if k % block_k or group % block_k:
        raise ValueError(f"int4 GEMM: K = {k} and group {group} need a common tile of at least 16")
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split)
    if split == 1:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        out = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    _w4a16_kernel[grid](
        x,
        qweight,
        qzeros,
        scales,
        out,
        m,
        n,
        k,
        x.stride(0),
        group,
        block_m,
        block_n,
        block_k,
        split,
        "ieee" if x.dtype == torch.float32 else "tf32",
    )
    out = out.to(x.dtype)
    return out if bias is None else out + bias
