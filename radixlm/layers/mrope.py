"""Multimodal rotary embedding (M-RoPE, Qwen2-VL / Qwen2.5-VL): neox rotary whose frequency
columns are split in three sections, rotated by a token's temporal, height and width
positions respectively (`radixlm.multimodal.mrope` computes them).

A separate class from `RotaryEmbedding` on purpose: the Triton backend fuses only that class's
rotary into its KV store and sends every other rotary through the reference path, which calls
this module, so the fused kernel never sees (and never misreads) three-row positions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radixlm.layers.basic import rope_inv_freq, rotate_neox


def _plain_rope(rope: dict[str, Any]) -> dict[str, Any]:
    """The rope parameters without the M-RoPE keys (older checkpoints name the type `mrope`)."""
    plain = {k: v for k, v in rope.items() if k != "mrope_section"}
    if plain.get("rope_type", plain.get("type")) == "mrope":
        plain.pop("type", None)
        plain["rope_type"] = "default"
    return plain


class MRotaryEmbedding(nn.Module):
    """`forward(positions, q, k)`: positions [T] (every section at the same position: plain
    rotary) or [3, T] (temporal, height, width rows). `section` [s_t, s_h, s_w] sums to
    head_dim / 2: the first s_t frequency columns follow the temporal row, the next s_h the
    height row, the last s_w the width row (in both halves of the head)."""

    def __init__(self, head_dim: int, max_positions: int, rope: dict[str, Any], section: list[int]) -> None:
        super().__init__()
        if sum(section) != head_dim // 2 or len(section) != 3:
            raise ValueError(f"mrope_section {section} must have 3 parts summing to head_dim / 2 = {head_dim // 2}")
        self.head_dim, self.max_positions, self.section = head_dim, max_positions, list(section)
        self.rope = _plain_rope(rope)
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.register_buffer("columns", torch.empty(0, dtype=torch.int64), persistent=False)

    def init_cache(self, device: torch.device) -> None:
        """(Re)compute the float32 cos/sin tables [max_positions, head_dim / 2] and the section of
        each frequency column; called after the model is materialized."""
        inv_freq, scaling = rope_inv_freq(self.rope, self.head_dim)
        freqs = torch.outer(torch.arange(self.max_positions, dtype=torch.float32), inv_freq)
        self.cos = (freqs.cos() * scaling).to(device)
        self.sin = (freqs.sin() * scaling).to(device)
        self.columns = torch.repeat_interleave(torch.arange(3), torch.tensor(self.section)).to(device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, H, D] and k [T, Hkv, D]."""
        if positions.dim() == 1:
            cos, sin = self.cos[positions], self.sin[positions]
        else:
            index = self.columns.view(1, 1, -1).expand(1, positions.shape[1], -1)
            cos = self.cos[positions].gather(0, index)[0]
            sin = self.sin[positions].gather(0, index)[0]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return rotate_neox(q, cos, sin), rotate_neox(k, cos, sin)
