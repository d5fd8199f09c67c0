"""The Triton kernels of `int4_kmajor`: batch-1 int4 GEMV over K-major words (GPTQ's stored form
and Q4_K repacked, `q4k_kmajor`) and the Q4_K tensor-core GEMM. Imported only where Triton is.

Both weights are int32 words [K/8, N] whose word (r, n) packs W[n, 8r .. 8r+7] (nibble i =
element 8r + i). A program owns BLOCK_N outputs of one activation row and a K range of whole
tiles of BLOCK_W word rows (Q4_K: one 32-element group, 4 rows); each thread loads 16-byte
vectors of consecutive outputs (all a tile's rows for them when the warps lie along N), and per
nibble plane i a word row meets the one activation x[8r + i], shared by the thread's outputs.
Per word the kernel forms

    part = sum_i x_i f(q_i)    and    xs = sum_i x_i

in one of two ways, chosen by the host (`int4_kmajor.use_asm`):
  * portable (any device, Triton's interpreter): f = 1 + q / 16 as float32 bits (q moved under
    the exponent of 1.0 with a shift and an and-or; no int-to-float conversion, which runs at a
    quarter of the FMA rate on Hopper), so sum x q = 16 (part - xs); float32 throughout (the
    bracket cancels at most ~5 of float32's 24 bits);
  * inline PTX on CUDA for half-precision activations: the word's nibbles or-ed into float16
    1024 (0x6400) two at a time with `lop3` (one shift and four `lop3` per eight codes), 1024
    subtracted (exact), and the eight products summed as float16x2 with the activations scaled by
    2^-6 (no overflow below |x| ~ 70,000); part = 2^-6 sum x q, relative error ~2^-10 per word,
    below the bf16 output's 2^-8.
Scales apply per tile and output, loaded as [1, BLOCK_N] rows in the words' layout (no layout
conversion in the K loop: `benchmarks/int4_gemv_sass.py --kmajor`): GPTQ's s and zero point z,
Q4_K's d sc_g and dmin m_g formed from the block's own fields (both exact in float32). Sums are
float32; a K split reduces inside the kernel (`int4_packed._reduce_splits`: the tile's last split
writes the output), so a call is one launch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from radixlm.kernels.int4_packed import _plane, _reduce_splits


@triton.jit
def _half_pair(a, b):
    """Two float16 tensors as one int32 tensor (a in the low half)."""
    lo = a.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return lo | (b.to(tl.int16, bitcast=True).to(tl.int32) << 16)


# One word (8 codes) times eight activations as float16x2 pairs (x_i | x_{i+4} << 16, i = 0..3):
# $0 (f32) = sum_i q_i x_i. Nibbles (0, 4) and (2, 6) become 1024 + q, nibbles (1, 5) and (3, 7)
# 1024 + 16 q; q = v - 1024 and q = v / 16 - 64 respectively, both exact in float16.
_DOT8_PTX = tl.constexpr(
    """
{
.reg .b32 kw, km, klo, khi, k16, k64, qa, qb, qc, qd, acc;
.reg .b16 lo, hi;
.reg .f32 flo, fhi;
mov.b32 km, 0x64006400;
mov.b32 klo, 0x000F000F;
mov.b32 khi, 0x00F000F0;
mov.b32 k16, 0x2C002C00;
mov.b32 k64, 0xD400D400;
shr.u32 kw, $1, 8;
lop3.b32 qa, $1, klo, km, 0xEA;
lop3.b32 qb, $1, khi, km, 0xEA;
lop3.b32 qc, kw, klo, km, 0xEA;
lop3.b32 qd, kw, khi, km, 0xEA;
sub.f16x2 qa, qa, km;
sub.f16x2 qc, qc, km;
fma.rn.f16x2 qb, qb, k16, k64;
fma.rn.f16x2 qd, qd, k16, k64;
mul.f16x2 acc, qa, $2;
fma.rn.f16x2 acc, qb, $3, acc;
fma.rn.f16x2 acc, qc, $4, acc;
fma.rn.f16x2 acc, qd, $5, acc;
mov.b32 {lo, hi}, acc;
cvt.f32.f16 flo, lo;
cvt.f32.f16 fhi, hi;
add.f32 $0, flo, fhi;
}
"""
)


@triton.jit
def _word_dots(words, xp, ASM: tl.constexpr):
    """words [BW, BN] int32, xp [BW, 1] pointers to each row's first activation: (part
    [BW, BN], xs [BW, 1]) with sum_i x_i q_i = QS (part - QO xs) (`_consts`)."""
    x0 = tl.load(xp).to(tl.float32)
    x1 = tl.load(xp + 1).to(tl.float32)
    x2 = tl.load(xp + 2).to(tl.float32)
    x3 = tl.load(xp + 3).to(tl.float32)
    x4 = tl.load(xp + 4).to(tl.float32)
    x5 = tl.load(xp + 5).to(tl.float32)
    x6 = tl.load(xp + 6).to(tl.float32)
    x7 = tl.load(xp + 7).to(tl.float32)
    xs = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))
    if ASM:
        c: tl.constexpr = 0.015625  # 2^-6: float16 products stay finite below |x| ~ 70,000
        xa = tl.broadcast_to(_half_pair((x0 * c).to(tl.float16), (x4 * c).to(tl.float16)), words.shape)
        xb = tl.broadcast_to(_half_pair((x1 * c).to(tl.float16), (x5 * c).to(tl.float16)), words.shape)
        xc = tl.broadcast_to(_half_pair((x2 * c).to(tl.float16), (x6 * c).to(tl.float16)), words.shape)
        xd = tl.broadcast_to(_half_pair((x3 * c).to(tl.float16), (x7 * c).to(tl.float16)), words.shape)
        part = tl.inline_asm_elementwise(
            _DOT8_PTX, "=r,r,r,r,r,r", [words, xa, xb, xc, xd], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        part = _plane(words, 0) * x0 + _plane(words, 1) * x1
        part += _plane(words, 2) * x2 + _plane(words, 3) * x3
        part += _plane(words, 4) * x4 + _plane(words, 5) * x5
        part += _plane(words, 6) * x6 + _plane(words, 7) * x7
    return part, xs


@triton.jit
def _consts(ASM: tl.constexpr):
    """(QS, QO) of `_word_dots`: sum x q = QS (part - QO xs)."""
    if ASM:
        return 64.0, 0.0
    else:
        return 16.0, 1.0


@triton.jit
def _finish(y, y_ptr, sums_ptr, counts_ptr, row, pid_n, rn, n_ok, N, stride_counts, split_k, SPLIT: tl.constexpr):
    out = y_ptr + row.to(tl.int64) * N + rn
    if SPLIT:
        sums = sums_ptr + row.to(tl.int64) * N + rn
        _reduce_splits(y, out, sums, counts_ptr + row * stride_counts + pid_n, n_ok, split_k)
    else:
        tl.store(out, y.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _gptq_gemv_kernel(
    x_ptr,
    qw_ptr,
    qz_ptr,
    s_ptr,
    y_ptr,
    sums_ptr,
    counts_ptr,
    N,
    stride_xm,
    stride_counts,
    k_per_split,
    split_k,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
    SPLIT: tl.constexpr,
    ASM: tl.constexpr,
):
    row, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    block_k: tl.constexpr = BLOCK_W * 8
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rw = tl.arange(0, BLOCK_W)
    w_ptrs = qw_ptr + rw[:, None].to(tl.int64) * N + rn[None, :]
    xp = x_ptr + row.to(tl.int64) * stride_xm + rw[:, None] * 8
    rn2, n_ok2 = rn[None, :], n_ok[None, :]
    z_shift = (rn2 % 8) * 4
    QS, QO = _consts(ASM)
    acc = tl.zeros((BLOCK_W, BLOCK_N), dtype=tl.float32)
    k_first = pid_k * k_per_split
    k_last = k_first + k_per_split - block_k
    words = tl.load(w_ptrs + (k_first // 8) * N, mask=n_ok[None, :], other=0)
    for k0 in range(k_first, k_first + k_per_split, block_k):
        words_next = tl.load(
            w_ptrs + (tl.minimum(k0 + block_k, k_last) // 8) * N, mask=n_ok[None, :], other=0
        )  # the last reloads its own
        part, xs = _word_dots(words, xp + k0, ASM)
        g = k0 // GROUP
        s = tl.load(s_ptr + g * N + rn2, mask=n_ok2, other=0.0).to(tl.float32)  # [1, BN]
        z = ((tl.load(qz_ptr + g * (N // 8) + rn2 // 8, mask=n_ok2, other=0) >> z_shift) & 0xF).to(tl.float32)
        acc += (QS * s) * part - (s * (QS * QO + z)) * xs
        words = words_next
    y = tl.sum(acc, axis=0)  # one cross-thread reduction per program
    _finish(y, y_ptr, sums_ptr, counts_ptr, row, pid_n, rn, n_ok, N, stride_counts, split_k, SPLIT)


@triton.jit
def _q4k_gemv_kernel(
    x_ptr,
    qw_ptr,
    sm_ptr,
    dd_ptr,
    y_ptr,
    sums_ptr,
    counts_ptr,
    N,
    stride_xm,
    stride_counts,
    k_per_split,
    split_k,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    ASM: tl.constexpr,
):
    row, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rn2, n_ok2 = rn[None, :], n_ok[None, :]
    rw = tl.arange(0, 4)  # a tile is one 32-element group: its four word rows
    w_ptrs = qw_ptr + rw[:, None].to(tl.int64) * N + rn[None, :]
    xp = x_ptr + row.to(tl.int64) * stride_xm + rw[:, None] * 8
    QS, QO = _consts(ASM)
    acc = tl.zeros((4, BLOCK_N), dtype=tl.float32)
    k_first = pid_k * k_per_split
    k_last = k_first + k_per_split - 32
    words = tl.load(w_ptrs + (k_first // 8) * N, mask=n_ok[None, :], other=0)
    for k0 in range(k_first, k_first + k_per_split, 32):
        words_next = tl.load(w_ptrs + (tl.minimum(k0 + 32, k_last) // 8) * N, mask=n_ok[None, :], other=0)
        part, xs = _word_dots(words, xp + k0, ASM)
        g = k0 // 32
        # [1, BN] like the words' rows: the same layout, no conversion per tile
        sm = tl.load(sm_ptr + (g // 2) * N + rn2, mask=n_ok2, other=0) >> ((g % 2) * 16)
        dd = tl.load(dd_ptr + (k0 // 256) * N + rn2, mask=n_ok2, other=0)
        d = (dd & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        dmin = (dd >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        s = d * (sm & 63).to(tl.float32)  # d sc_g, exact
        b = dmin * ((sm >> 8) & 63).to(tl.float32)  # dmin m_g, exact
        acc += (QS * s) * part - (QS * QO * s + b) * xs
        words = words_next
    y = tl.sum(acc, axis=0)
    _finish(y, y_ptr, sums_ptr, counts_ptr, row, pid_n, rn, n_ok, N, stride_counts, split_k, SPLIT)


@triton.jit
def _q4k_gemm_kernel(
    x_ptr,
    qw_ptr,
    sm_ptr,
    dd_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    rk = tl.arange(0, 128)  # a K tile: 4 groups, 16 word rows
    rw = tl.arange(0, 16)
    rg = tl.arange(0, 4)
    shifts = (tl.arange(0, 8) * 4)[None, :, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, 128):
        x_off = rm[:, None].to(tl.int64) * stride_xm + k0 + rk[None, :]
        x = tl.load(x_ptr + x_off, mask=m_ok[:, None], other=0.0)
        w_off = (k0 // 8 + rw)[:, None].to(tl.int64) * N + rn[None, :]
        words = tl.load(qw_ptr + w_off, mask=n_ok[None, :], other=0)
        q = tl.reshape((words[:, None, :] >> shifts) & 0xF, (128, BLOCK_N))  # row 8 r + i: element 8 r + i
        grp = k0 // 32 + rg
        sm = tl.load(sm_ptr + (grp // 2)[:, None] * N + rn[None, :], mask=n_ok[None, :], other=0)
        sm = sm >> ((grp % 2) * 16)[:, None]  # [4, BN]
        dd = tl.load(dd_ptr + (k0 // 256) * N + rn, mask=n_ok, other=0)
        d = (dd & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        dmin = (dd >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        s = tl.broadcast_to((d[None, :] * (sm & 63).to(tl.float32))[:, None, :], (4, 32, BLOCK_N))
        b = tl.broadcast_to((dmin[None, :] * ((sm >> 8) & 63).to(tl.float32))[:, None, :], (4, 32, BLOCK_N))
        w = q.to(tl.float32) * tl.reshape(s, (128, BLOCK_N)) - tl.reshape(b, (128, BLOCK_N))
        acc += tl.dot(x, w.to(x.dtype), input_precision=PRECISION)
    out = y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
