"""One 4-bit weight layout for the GPU kernels of GPTQ, AWQ and GGUF Q4_K (repacked at load).

`PackedInt4` holds W [N, K] (y = x W^T) as
  * `codes` int32 [N, K / 8]: each output row's codes contiguous, so a program streams whole
    rows in wide vectors. Within plane group p of P = `plane` elements (32, or 16 for groups of
    16; PW = P / 8 words), nibble i of word p * PW + j holds q[n, p * P + i * PW + j]: the i-th
    nibble plane of a plane group meets PW consecutive activations;
  * `scales`, `bias` [N, K / G] (G = `group`, a multiple of P); w[n, k] = scales[n, k // G] *
    q[n, k] + bias[n, k // G].

G is a power of two from 16 to 128; a checkpoint group that is larger (GPTQ's -1: one group
per row) is stored as sub-groups with repeated scales. Exactness of the conversions:
  * GPTQ / AWQ, w = (q - z) s: scales keep the checkpoint's dtype, bias = -z s in float32 (a
    4-bit by 11-bit product: exact), so w is exactly the reference's (q - z) s.
  * Q4_K, w = d sc_j q - dmin m_j: s = d sc_j and b = -dmin m_j are float32-exact (11-bit by
    6-bit products); stored as float32 they are exact, as float16 each rounds to 11 bits
    (relative error <= 2^-11 per group; `tests/kernels/test_packed_int4.py` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from radixlm.layers.quantization import gguf_blocks
from radixlm.layers.quantization.nibbles import unpack

MAX_GROUP = 128  # the largest group the kernels take as one tile piece
_ROW_CHUNK = 4096  # rows converted at a time (bounds the int64 temporaries at load)


@dataclass(frozen=True)
class PackedInt4:
    """A [N, K] int4 weight in the layout of the module docstring."""

    codes: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor
    group: int
    plane: int

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1] * 8


def layout_group(group: int, k: int) -> int:
    """The stored group: the largest power of two <= MAX_GROUP dividing `group` (and K)."""
    g = MAX_GROUP
    while g >= 16 and (group % g or k % g):
        g //= 2
    if g < 16:
        raise ValueError(f"packed int4: group {group} / K {k} need a power-of-two sub-group of at least 16")
    return g


def plane_of(group: int) -> int:
    """The plane group of a scale group: 32 elements (four words: one 16-byte vector), or 16."""
    return 32 if group % 32 == 0 else 16


def pack_codes(q: torch.Tensor, group: int) -> torch.Tensor:
    """Codes q [N, K] (0..15) -> int32 words [N, K / 8] in plane order within each plane group
    of `group` elements."""
    n, k = q.shape
    gw = group // 8
    out = torch.empty((n, k // 8), dtype=torch.int32, device=q.device)
    shifts = (torch.arange(8, device=q.device, dtype=torch.int64) * 4).view(1, 1, 8, 1)
    for start in range(0, n, _ROW_CHUNK):
        part = q[start : start + _ROW_CHUNK].to(torch.int64).reshape(-1, k // group, 8, gw)
        words = (part << shifts).sum(2)  # [rows, K / G, GW], < 2^32
        words = torch.where(words >= 2**31, words - 2**32, words)
        out[start : start + _ROW_CHUNK] = words.reshape(-1, k // 8).to(torch.int32)
    return out


def unpack_codes(codes: torch.Tensor, group: int) -> torch.Tensor:
    """Inverse of `pack_codes`: int64 [N, K] codes."""
    n, words = codes.shape
    gw = group // 8
    shifts = (torch.arange(8, device=codes.device, dtype=torch.int64) * 4).view(1, 1, 8, 1)
    w = codes.to(torch.int64).reshape(n, words // gw, 1, gw)
    return ((w >> shifts) & 0xF).reshape(n, words * 8)


def dequantize(p: PackedInt4) -> torch.Tensor:
    """float32 W [N, K]."""
    q = unpack_codes(p.codes, p.plane).float()
    rep = lambda t: t.float().repeat_interleave(p.group, 1)  # noqa: E731
    return rep(p.scales) * q + rep(p.bias)


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> PackedInt4:
    """The int4 method's stored form (`int4.py`: qweight [K/8, N] packed along K, true zero points
    qzeros [K/g, N/8] packed along N, scales [K/g, N]) in this layout; w = (q - z) s exactly."""

    k = qweight.shape[0] * 8
    g = layout_group(group, k)
    q = unpack(qweight, 0).t()  # [N, K]
    z = unpack(qzeros, 1).t().float()  # [N, K / group]
    s = scales.t()
    rep = group // g
    bias = (-z * s.float()).repeat_interleave(rep, 1)
    scales = s.repeat_interleave(rep, 1).contiguous()
    return PackedInt4(pack_codes(q, plane_of(g)), scales, bias.contiguous(), g, plane_of(g))


def from_q4k(rows: torch.Tensor, k: int, scale_dtype: torch.dtype) -> PackedInt4:
    """GGUF Q4_K rows (uint8 [N, row_bytes]) in this layout, group 32: s = d sc_j, b = -dmin m_j
    (float32-exact, then cast to `scale_dtype`)."""
    n = rows.shape[0]
    _, size = gguf_blocks.BLOCKS[gguf_blocks.Q4_K]
    codes = torch.empty((n, k // 8), dtype=torch.int32, device=rows.device)
    scales = torch.empty((n, k // 32), dtype=scale_dtype, device=rows.device)
    bias = torch.empty_like(scales)
    for start in range(0, n, _ROW_CHUNK):
        blocks = rows[start : start + _ROW_CHUNK].reshape(-1, size)
        sc, m = gguf_blocks._k_scales(blocks[:, 4:16])  # [B, 8]
        d, dmin = gguf_blocks._f16(blocks, 0), gguf_blocks._f16(blocks, 2)  # [B, 1]
        count = blocks.shape[0] * 256 // k
        q = gguf_blocks._k_nibbles(blocks[:, 16:]).reshape(count, k)  # element 32 j + l of sub-block j
        codes[start : start + count] = pack_codes(q, 32)
        scales[start : start + count] = (d * sc).reshape(count, -1).to(scale_dtype)
        bias[start : start + count] = (-dmin * m).reshape(count, -1).to(scale_dtype)
    return PackedInt4(codes, scales, bias, 32, 32)


def hold(layer: nn.Module, packed: PackedInt4, prefix: str = "") -> None:
    """Register a `PackedInt4`'s tensors as parameters of `layer` (`{prefix}codes`,
    `{prefix}packed_scales`, `{prefix}packed_bias`), so memory accounting sees them."""
    for name, value in (("codes", packed.codes), ("packed_scales", packed.scales), ("packed_bias", packed.bias)):
        layer.register_parameter(prefix + name, nn.Parameter(value, requires_grad=False))
