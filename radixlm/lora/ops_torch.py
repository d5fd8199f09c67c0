"""The reference LoRA term in PyTorch (the CPU path, and what the Triton kernels are tested against).

For every segment (start, end, slot) with slot >= 0:
    shrink:  s[start:end] = x[start:end] @ A[slot]^T                      (A: [slots, R, K])
    expand:  out[start:end] += (s[start:end] @ B[slot]^T) * scale[slot]   (B: [slots, N, R])
Rows on slot -1 (the base model) keep `out` as it is.
"""

from __future__ import annotations

from typing import Sequence

import torch


def shrink(x: torch.Tensor, a: torch.Tensor, segments: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """s [T, R] in x's dtype; zero on base rows."""
    s = x.new_zeros((x.shape[0], a.shape[1]))
    for start, end, slot in segments:
        if slot >= 0:
            torch.matmul(x[start:end], a[slot].t(), out=s[start:end])
    return s


def expand_add(
    out: torch.Tensor,
    s: torch.Tensor,
    b: torch.Tensor,
    scales: Sequence[float],
    segments: Sequence[tuple[int, int, int]],
) -> torch.Tensor:
    """out[rows] += (s[rows] @ B[slot]^T) * scale[slot] per segment, in place; returns `out`."""
    for start, end, slot in segments:
        if slot >= 0:
            out[start:end] += torch.matmul(s[start:end], b[slot].t()) * scales[slot]
    return out
