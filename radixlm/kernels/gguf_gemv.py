"""GEMV over GGUF blocks: y[1, N] = x[1, K] W[N, K]^T with W still in llama.cpp's blocks.

W is uint8 [N, row_bytes] (rows self-contained; formats in `layers/quantization/gguf_blocks.py`).
Each program takes BLOCK_N rows and walks K in tiles of BLOCK_K elements; every element's byte
(and its block's scale bytes, which neighbouring elements share and the cache serves) is addressed
directly, decoded in registers and multiplied in float32, so the weight is read once, at its
quantized size. Q4_K (the common llama.cpp choice) has its own kernel that reads whole
super-blocks as tiles and applies the scales per 32-element sub-block, not per element.
`dequantize_rows` writes the same decoding to a [N, K] tensor (the matmul of more than one row:
decode, then one GEMM).
"""

from __future__ import annotations

from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

from radixlm.layers.quantization.gguf_blocks import BLOCKS, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, Q8_0

SUPPORTED = (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)

if triton is not None:

    @triton.jit
    def _f16_at(p):
        """The float16 at byte pointer p (little-endian), as float32."""
        lo = tl.load(p).to(tl.uint16)
        hi = tl.load(p + 1).to(tl.uint16)
        return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _scale_min_k4(sb, j):
        """Q4_K / Q5_K's 6-bit (scale, min) of sub-block j (sb: the 12 scale bytes' pointer)."""
        low = j < 4
        a = tl.load(sb + j).to(tl.int32)  # scales[j]
        b = tl.load(sb + j + 4).to(tl.int32)  # scales[j + 4] (j < 8 always)
        c = tl.load(sb + tl.where(low, j, j - 4)).to(tl.int32)  # scales[j - 4] where j >= 4
        d = tl.load(sb + tl.where(low, j + 4, j)).to(tl.int32)  # scales[j] where j >= 4
        sc = tl.where(low, a & 63, (b & 0xF) | ((c >> 6) << 4))
        mn = tl.where(low, b & 63, (b >> 4) | ((d >> 6) << 4))
        return sc.to(tl.float32), mn.to(tl.float32)

    @triton.jit
    def _decode(row, k, QTYPE: tl.constexpr):
        """float32 weights at element indices k ([BK]) of the rows starting at byte pointers row ([BN, 1])."""
        if QTYPE == 8:  # Q8_0
            base = row + (k // 32 * 34)[None, :]
            q = tl.load(base + 2 + (k % 32)[None, :]).to(tl.int8, bitcast=True).to(tl.float32)
            return _f16_at(base) * q
        elif QTYPE == 2 or QTYPE == 3:  # Q4_0, Q4_1
            i = (k % 32)[None, :]
            size = 18 if QTYPE == 2 else 20
            base = row + (k // 32 * size)[None, :]
            byte = tl.load(base + (size - 16) + i % 16).to(tl.int32)
            q = ((byte >> (i // 16 * 4)) & 0xF).to(tl.float32)
            if QTYPE == 2:
                return _f16_at(base) * (q - 8.0)
            return _f16_at(base) * q + _f16_at(base + 2)
        elif QTYPE == 12 or QTYPE == 13:  # Q4_K, Q5_K
            size = 144 if QTYPE == 12 else 176
            base = row + (k // 256 * size)[None, :]
            e = (k % 256)[None, :]
            c, h, i = e // 64, (e % 64) // 32, e % 32
            j = 2 * c + h
            qs = 16 if QTYPE == 12 else 48
            q = (tl.load(base + qs + 32 * c + i).to(tl.int32) >> (4 * h)) & 0xF
            if QTYPE == 13:
                q += ((tl.load(base + 16 + i).to(tl.int32) >> j) & 1) * 16
            sc, mn = _scale_min_k4(base + 4, j)
            return _f16_at(base) * sc * q.to(tl.float32) - _f16_at(base + 2) * mn
        else:  # Q6_K
            base = row + (k // 256 * 210)[None, :]
            e = (k % 256)[None, :]
            t, u, i = e // 128, (e % 128) // 32, e % 32
            low = (tl.load(base + 64 * t + 32 * (u % 2) + i).to(tl.int32) >> (4 * (u // 2))) & 0xF
            high = (tl.load(base + 128 + 32 * t + i).to(tl.int32) >> (2 * u)) & 3
            sc = tl.load(base + 192 + 8 * t + 2 * u + i // 16).to(tl.int8, bitcast=True).to(tl.float32)
            return _f16_at(base + 208) * sc * ((low | (high << 4)) - 32).to(tl.float32)

    @triton.jit
    def _gguf_gemv_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        y_ptr,
        N,
        K,
        ROW_BYTES,
        QTYPE: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = rows < N
        row_ptr = w_ptr + tl.where(ok, rows, 0)[:, None].to(tl.int64) * ROW_BYTES
        cols = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w = _decode(row_ptr, k0 + cols, QTYPE)
            x = tl.load(x_ptr + k0 + cols).to(tl.float32)
            acc += tl.sum(w * x[None, :], axis=1)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _q4k_gemv_kernel(
        x_ptr,
        w_ptr,
        words_ptr,
        y_ptr,
        N,
        K,
        ROW_BYTES,
        BLOCKS_PER_SPLIT,
        SPLIT: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Q4_K by whole super-blocks: each row's 128 code bytes read as 32 int32 words, one
        [BLOCK_N, 4, 8] tile (chunk c of 64 elements, word w within it); byte b of word (c, w)
        holds elements 64c + 4w + b (low nibble, sub-block 2c) and 64c + 32 + 4w + b (high
        nibble, sub-block 2c + 1). Per super-block: sum_j d sc_j (q_j . x_j) - dmin m_j sum(x_j).
        A program takes BLOCKS_PER_SPLIT super-blocks of its rows; with SPLIT > 1 the float32
        partial sums are added atomically into y."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = rows < N
        safe = tl.where(ok, rows, 0).to(tl.int64)
        row_ptr = w_ptr + safe[:, None] * ROW_BYTES  # [BN, 1] bytes
        word_ptr = words_ptr + safe[:, None, None] * (ROW_BYTES // 4)  # [BN, 1, 1] int32 words
        c4 = tl.arange(0, 4)
        w8 = tl.arange(0, 8)
        tile = (c4[:, None] * 8 + w8[None, :])[None, :, :]  # [1, 4, 8] word offsets of the codes
        x_off = c4[:, None] * 64 + w8[None, :] * 4  # [4, 8]: element of byte 0's low nibble
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        first = tl.program_id(1) * BLOCKS_PER_SPLIT
        for s in range(first, first + BLOCKS_PER_SPLIT):
            codes = tl.load(word_ptr + s * 36 + 4 + tile)  # [BN, 4, 8]
            x_s = x_ptr + s * 256 + x_off
            dot_lo = tl.zeros((BLOCK_N, 4), dtype=tl.float32)
            dot_hi = tl.zeros((BLOCK_N, 4), dtype=tl.float32)
            sum_lo = tl.zeros((4, 8), dtype=tl.float32)
            sum_hi = tl.zeros((4, 8), dtype=tl.float32)
            for b in tl.static_range(4):
                byte = (codes >> (8 * b)) & 0xFF
                x_lo = tl.load(x_s + b).to(tl.float32)  # [4, 8]
                x_hi = tl.load(x_s + 32 + b).to(tl.float32)
                dot_lo += tl.sum((byte & 0xF).to(tl.float32) * x_lo[None, :, :], axis=2)
                dot_hi += tl.sum((byte >> 4).to(tl.float32) * x_hi[None, :, :], axis=2)
                sum_lo += x_lo
                sum_hi += x_hi
            base = row_ptr + s * 144
            sc_lo, mn_lo = _scale_min_k4(base + 4, (2 * c4)[None, :])  # [BN, 4]
            sc_hi, mn_hi = _scale_min_k4(base + 4, (2 * c4 + 1)[None, :])
            scaled = sc_lo * dot_lo + sc_hi * dot_hi
            mins = mn_lo * tl.sum(sum_lo, axis=1)[None, :] + mn_hi * tl.sum(sum_hi, axis=1)[None, :]
            acc += tl.sum(_f16_at(base) * scaled - _f16_at(base + 2) * mins, axis=1)  # d, dmin: [BN, 1]
        if SPLIT == 1:
            tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=ok)
        else:
            tl.atomic_add(y_ptr + rows, acc, mask=ok)

    @triton.jit
    def _dequant_kernel(
        w_ptr, out_ptr, N, K, ROW_BYTES, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = rows < N
        row_ptr = w_ptr + tl.where(ok, rows, 0)[:, None].to(tl.int64) * ROW_BYTES
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        w = _decode(row_ptr, k, QTYPE)
        out = out_ptr + rows[:, None].to(tl.int64) * K + k[None, :]
        tl.store(out, w.to(out_ptr.dtype.element_ty), mask=ok[:, None])


def _block_k(qtype: int, k: int) -> int:
    tile = 256
    while k % tile:
        tile //= 2
    if tile < 32:
        raise ValueError(f"GGUF kernels: K = {k} is not a multiple of 32")
    return tile


def gemv(x: torch.Tensor, w: torch.Tensor, qtype: int, k: int, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[1, N] in x's dtype: a contiguous row x [1, k] times the blocks w [N, row_bytes] (+ bias)."""
    n = w.shape[0]
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    block_n = 8
    if qtype == Q4_K:
        return _q4k_gemv(x, w, k, bias)
    _gguf_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, w if bias is None else bias, out, n, k, w.shape[1], qtype, bias is not None, block_n, _block_k(qtype, k)
    )
    return out


def _q4k_split(n_tiles: int, blocks: int) -> int:
    """Super-block splits of K: while there are fewer than ~4 programs per SM (132 SMs) and each
    split keeps at least two super-blocks."""
    split = 1
    while n_tiles * split * 2 <= 528 and blocks % (split * 2) == 0 and blocks // (split * 2) >= 2:
        split *= 2
    return split


def _q4k_gemv(x: torch.Tensor, w: torch.Tensor, k: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
    n = w.shape[0]
    block_n = 16
    blocks = k // 256
    split = _q4k_split(triton.cdiv(n, block_n), blocks)
    out_dtype = torch.float32 if split > 1 else x.dtype
    out = (torch.zeros if split > 1 else torch.empty)((1, n), dtype=out_dtype, device=x.device)
    words = w.view(torch.int32)
    _q4k_gemv_kernel[(triton.cdiv(n, block_n), split)](
        x, w, words, out, n, k, w.shape[1], blocks // split, split, block_n
    )
    out = out.to(x.dtype)
    return out if bias is None else out + bias


def dequantize_rows(w: torch.Tensor, qtype: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, k] in `dtype` decoded from the blocks w [N, row_bytes]."""
    n = w.shape[0]
    out = torch.empty((n, k), dtype=dtype, device=w.device)
    block_n, block_k = 16, _block_k(qtype, k)
    _dequant_kernel[(triton.cdiv(n, block_n), k // block_k)](w, out, n, k, w.shape[1], qtype, block_n, block_k)
    return out


def block_shape(qtype: int) -> tuple[int, int]:
    """(elements, bytes) of one block."""
    return BLOCKS[qtype]
