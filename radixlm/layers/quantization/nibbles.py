"""int4 nibbles <-> int32 words (eight per word, lowest nibble first): the packing GPTQ, AWQ and
the repacked GGUF layouts share. Depends on torch only, so every int4 layout can import it."""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(8, dtype=torch.int32) * 4


def unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> their eight nibbles (0..15) in order along `dim` (8x longer)."""
    nib = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 0xF  # [..., 8]
    if dim in (-1, packed.dim() - 1):
        return nib.flatten(-2)
    return nib.movedim(-1, dim + 1).flatten(dim, dim + 1)


def pack(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Nibbles (0..15) -> int32 words, eight consecutive entries along `dim` per word."""
    v = values.to(torch.int32).movedim(dim, -1)
    v = v.reshape(*v.shape[:-1], -1, 8)
    words = (v << _SHIFTS.to(v.device)).sum(-1, dtype=torch.int64)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.movedim(-1, dim).contiguous()
