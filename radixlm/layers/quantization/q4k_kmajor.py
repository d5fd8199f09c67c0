"""GGUF Q4_K repacked, field for field, into the K-major layout of `kernels.int4_kmajor`.

`Q4KMajor` holds W [N, K] (y = x W^T) as
  * `codes` int32 [K/8, N]: GPTQ's qweight orientation: word (r, n) holds W[n, 8r + i] in
    nibble i, and consecutive outputs are consecutive words, so a warp reads 16-byte vectors
    along N and a 32-element group is four word rows;
  * `scale_min` int32 [K/64, N]: the 6-bit (sc, m) of groups 2p and 2p + 1 as bytes
    (sc_2p, m_2p, sc_2p+1, m_2p+1);
  * `d_dmin` int32 [K/256, N]: the super-block's float16 d (low half) and dmin (high half), bit
    for bit.

w[n, k] = d sc_g q - dmin m_g with the block's own fields (148 bytes per 256 weights against the
block's 144), so the repack is exact; the kernel forms d sc_g and dmin m_g in float32, where
both products are exact (11-bit by 6-bit significands).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from radixlm.layers.quantization import gguf_blocks

GROUP = 32  # elements per (sc, m) group: four word rows
_ROW_CHUNK = 2048  # rows converted at a time (bounds the int64 temporaries at load)


@dataclass(frozen=True)
class Q4KMajor:
    """A [N, K] Q4_K weight in the layout of the module docstring."""

    codes: torch.Tensor
    scale_min: torch.Tensor
    d_dmin: torch.Tensor

    @property
    def n(self) -> int:
        return self.codes.shape[1]

    @property
    def k(self) -> int:
        return self.codes.shape[0] * 8


def _wrap32(v: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as the int32 with the same bits."""
    return torch.where(v >= 2**31, v - 2**32, v).to(torch.int32)


def pack_k(q: torch.Tensor) -> torch.Tensor:
    """Codes q [R, K] (0..15) -> int32 words [R, K / 8], nibble i of word r = q[:, 8r + i]."""
    r, k = q.shape
    shifts = torch.arange(8, device=q.device, dtype=torch.int64) * 4
    return _wrap32((q.to(torch.int64).reshape(r, k // 8, 8) << shifts).sum(-1))


def unpack_k(words: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_k`: int64 codes [R, K]."""
    r, w = words.shape
    shifts = torch.arange(8, device=words.device, dtype=torch.int64) * 4
    return ((words.to(torch.int64)[..., None] >> shifts) & 0xF).reshape(r, w * 8)


def from_q4k(rows: torch.Tensor, k: int) -> Q4KMajor:
    """Q4_K rows (uint8 [N, row_bytes]) in the K-major layout, on the rows' device."""
    n = rows.shape[0]
    size = gguf_blocks.BLOCKS[gguf_blocks.Q4_K][1]
    gguf_blocks.row_bytes(gguf_blocks.Q4_K, k)  # K a whole number of super-blocks
    codes = torch.empty((n, k // 8), dtype=torch.int32, device=rows.device)
    scale_min = torch.empty((n, k // 64), dtype=torch.int32, device=rows.device)
    d_dmin = torch.empty((n, k // 256), dtype=torch.int32, device=rows.device)
    for start in range(0, n, _ROW_CHUNK):
        part = rows[start : start + _ROW_CHUNK]
        count = part.shape[0]
        blocks = part.reshape(-1, size)
        sc, m = (t.to(torch.int64) for t in gguf_blocks._k_scales(blocks[:, 4:16]))  # [B, 8]
        pairs = sc[:, 0::2] | m[:, 0::2] << 8 | sc[:, 1::2] << 16 | m[:, 1::2] << 24  # [B, 4]
        scale_min[start : start + count] = _wrap32(pairs).reshape(count, k // 64)
        d_dmin[start : start + count] = blocks[:, 0:4].contiguous().view(torch.int32).reshape(count, k // 256)
        q = gguf_blocks._k_nibbles(blocks[:, 16:]).reshape(count, k)  # element 32 j + l of sub-block j
        codes[start : start + count] = pack_k(q)
    return Q4KMajor(codes.t().contiguous(), scale_min.t().contiguous(), d_dmin.t().contiguous())


def fields(p: Q4KMajor) -> tuple[torch.Tensor, ...]:
    """(q int64 [N, K], sc, m int64 [N, K / 32], d, dmin float32 [N, K / 256]) of the layout."""
    q = unpack_k(p.codes.t())
    sm = p.scale_min.t().to(torch.int64) & 0xFFFFFFFF  # [N, K / 64]
    byte = lambda i: (sm >> (8 * i)) & 0xFF  # noqa: E731
    sc = torch.stack([byte(0), byte(2)], -1).flatten(1)
    m = torch.stack([byte(1), byte(3)], -1).flatten(1)
    halves = p.d_dmin.t().contiguous().view(torch.float16).float()  # [N, K / 128]: d, dmin pairs
    return q, sc, m, halves[:, 0::2], halves[:, 1::2]


def dequantize(p: Q4KMajor) -> torch.Tensor:
    """float32 W [N, K], each weight d sc q - dmin m as `gguf_blocks`' decoder rounds it."""
    q, sc, m, d, dmin = fields(p)
    rep = lambda t, r: t.repeat_interleave(r, 1)  # noqa: E731
    d32, dmin32 = rep(d, 8), rep(dmin, 8)
    w = rep(d32 * sc.float(), 32) * q.float() - rep(dmin32 * m.float(), 32)
    return w


def hold(layer: nn.Module, p: Q4KMajor, prefix: str) -> None:
    """Register the layout's tensors as parameters of `layer` (`{prefix}codes`,
    `{prefix}scale_min`, `{prefix}d_dmin`), so memory accounting sees them."""
    for name in ("codes", "scale_min", "d_dmin"):
        layer.register_parameter(prefix + name, nn.Parameter(getattr(p, name), requires_grad=False))
