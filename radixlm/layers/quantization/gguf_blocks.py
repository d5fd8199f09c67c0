"""GGUF (llama.cpp) block formats decoded in torch: the CPU reference of the gguf method.

A quantized [N, K] tensor is N rows of K / block elements' blocks, each row self-contained, held
as uint8 [N, row_bytes]. Formats (little-endian; d, dmin, m are float16):
  * Q8_0 (32 / 34 bytes): d, int8 q[32]; w = d q.
  * Q4_0 (32 / 18): d, q[16] (element i < 16 in the low nibble of byte i, i >= 16 in the high
    nibble of byte i - 16); w = d (q - 8).
  * Q4_1 (32 / 20): d, m, q[16] as Q4_0; w = d q + m.
  * Q4_K (256 / 144): d, dmin, 12 bytes of eight 6-bit (scale, min) pairs, q[128]; element
    64c + 32h + l is nibble h of byte 32c + l, in sub-block j = 2c + h; w = d sc_j q - dmin m_j.
  * Q5_K (256 / 176): d, dmin, scales as Q4_K, qh[32], q[128]; Q4_K's nibble plus 16 x bit j of
    qh[l]; w = d sc_j q - dmin m_j.
  * Q6_K (256 / 210): ql[128], qh[64], int8 sc[16], d; element 128 t + 32 u + l (t < 2, u < 4,
    l < 32) has its low 4 bits in nibble u // 2 of ql[64 t + 32 (u % 2) + l], its high 2 bits at
    bit 2u of qh[32 t + l], and scale sc[8 t + 2 u + l // 16]; w = d sc (q - 32).
"""

from __future__ import annotations

import torch

# type id (gguf.GGMLQuantizationType) -> (elements per block, bytes per block)
Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K = 8, 2, 3, 12, 13, 14
BLOCKS: dict[int, tuple[int, int]] = {
    Q8_0: (32, 34),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q4_K: (256, 144),
    Q5_K: (256, 176),
    Q6_K: (256, 210),
}
NAMES = {Q8_0: "Q8_0", Q4_0: "Q4_0", Q4_1: "Q4_1", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """float32 [B, 1] of the float16 at byte `at` of each block."""
    return blocks[:, at : at + 2].contiguous().view(torch.float16).float()


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """[B, n] bytes -> [B, 2n]: all low nibbles, then all high nibbles."""
    return torch.cat([q & 0xF, q >> 4], dim=1).float()


def _k_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit (scale, min) pairs of Q4_K / Q5_K's 12 bytes: float32 [B, 8] each."""
    s = scales.to(torch.int32)
    low_sc, low_m = s[:, 0:4] & 63, s[:, 4:8] & 63
    high_sc = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    high_m = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat([low_sc, high_sc], 1).float(), torch.cat([low_m, high_m], 1).float()


def _k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K / Q5_K's 128 bytes -> [B, 8, 32] nibbles: sub-block 2c + h is nibble h of bytes 32c..32c+31."""
    q = qs.reshape(-1, 4, 1, 32)
    return torch.cat([q & 0xF, q >> 4], dim=2).reshape(-1, 8, 32).to(torch.int32)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * b[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_nibbles(b[:, 2:]) - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * _nibbles(b[:, 4:]) + _f16(b, 2)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    sc, m = _k_scales(b[:, 4:16])
    q = _k_nibbles(b[:, 16:]).float()
    w = _f16(b, 0)[:, :, None] * sc[:, :, None] * q - _f16(b, 2)[:, :, None] * m[:, :, None]
    return w.reshape(-1, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    sc, m = _k_scales(b[:, 4:16])
    qh = b[:, 16:48].to(torch.int32)  # [B, 32]
    bits = (qh[:, None, :] >> torch.arange(8, device=b.device)[None, :, None]) & 1  # [B, 8, 32]
    q = (_k_nibbles(b[:, 48:]) + 16 * bits).float()
    w = _f16(b, 0)[:, :, None] * sc[:, :, None] * q - _f16(b, 2)[:, :, None] * m[:, :, None]
    return w.reshape(-1, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    ql = b[:, 0:128].to(torch.int32).reshape(-1, 2, 2, 32)  # [B, t, u % 2, l]
    qh = b[:, 128:192].to(torch.int32).reshape(-1, 2, 1, 32)  # [B, t, 1, l]
    sc = b[:, 192:208].contiguous().view(torch.int8).float().reshape(-1, 2, 4, 2)  # [B, t, u, l // 16]
    low = torch.cat([ql & 0xF, ql >> 4], dim=2)  # [B, t, u, l]: u = 0, 1 low nibbles, 2, 3 high
    high = (qh >> (2 * torch.arange(4, device=b.device)).view(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).float() - 32
    scale = sc.repeat_interleave(16, dim=3)  # [B, t, u, 32]
    return (_f16(b, 208)[:, :, None, None] * scale * q).reshape(-1, 256)


_DECODERS = {Q8_0: _q8_0, Q4_0: _q4_0, Q4_1: _q4_1, Q4_K: _q4_k, Q5_K: _q5_k, Q6_K: _q6_k}


def row_bytes(qtype: int, k: int) -> int:
    """Bytes of one row of `k` elements."""
    elements, size = BLOCKS[qtype]
    if k % elements:
        raise ValueError(f"GGUF {NAMES[qtype]}: a row of {k} is not a whole number of {elements}-element blocks")
    return k // elements * size


def dequantize(data: torch.Tensor, qtype: int, k: int) -> torch.Tensor:
    """float32 [N, k] of uint8 rows [N, row_bytes(qtype, k)]."""
    elements, size = BLOCKS[qtype]
    blocks = data.reshape(-1, size)
    return _DECODERS[qtype](blocks).reshape(data.shape[0], k)
