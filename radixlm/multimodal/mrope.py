"""Multimodal rotary positions (M-RoPE, Qwen2-VL / Qwen2.5-VL): every token has three rotary
positions (temporal, height, width).

A text token's three positions are equal. An image whose embedding rows form a (t, h, w)
grid (row-major) starting at prompt index `offset` takes positions `start + (i, j, k)` for
its row at grid cell (i, j, k), where `start` is the position the next text token would
have had; the text after it continues from `start + max(h, w)`. So every image shifts the
positions of everything after it by `max(h, w) - t*h*w` (never positive), and a token at
sequence index p after the last image (the rest of the prompt, every generated token) is
at `p + rope_delta(images)` in all three sections.

Computed from the images alone (no per-request arrays), so a prefill chunk, a re-prefill
after retraction or a decode step gets its rows without the rest of the prompt."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from radixlm.multimodal.inputs import ImageInput


def uses_mrope(images: Optional[Sequence[ImageInput]]) -> bool:
    """The request's images carry an M-RoPE grid (a Qwen2-VL-family model's prompt)."""
    return bool(images) and images[0].llm_grid is not None


def _advance(image: ImageInput) -> int:
    """How far the text position moves past the image: max(h, w) of its embedding grid."""
    _, h, w = image.llm_grid
    return max(h, w)


def rope_delta(images: Sequence[ImageInput]) -> int:
    """Rotary position minus sequence index of every token after the last image."""
    return sum(_advance(img) - img.length for img in images)


def grid_positions(grid: tuple[int, int, int]) -> np.ndarray:
    """[3, t*h*w] int64: the (t, h, w) index of each embedding row, in row-major order."""
    return np.indices(grid, dtype=np.int64).reshape(3, -1)


def mrope_rows(images: Sequence[ImageInput], start: int, end: int) -> np.ndarray:
    """[3, end - start] int64 rotary positions of sequence indices [start, end) of a request
    whose prompt holds `images` (sorted by offset; indices past the prompt are text)."""
    out = np.tile(np.arange(start, end, dtype=np.int64), (3, 1))
    shift = 0
    for image in images:
        lo, hi = image.offset, image.offset + image.length
        a, b = max(start, lo), min(end, hi)
        if a < b:
            cells = grid_positions(image.llm_grid)[:, a - lo : b - lo]
            out[:, a - start : b - start] = cells + (lo + shift)
        step = _advance(image) - image.length
        shift += step
        c = max(start, hi)
        if c < end:
            out[:, c - start :] += step  # later images' rows are overwritten when their turn comes
    return out


def batch_mrope(
    spans: Sequence[tuple[Optional[Sequence[ImageInput]], int, int]],
) -> Optional[tuple[np.ndarray, list[int]]]:
    """For an extend batch of requests' spans `(images, start, end)`, in batch order: the
    [3, T] rotary positions of its rows and each request's `rope_delta`; None when no request
    has M-RoPE images (then every row's three positions are its sequence index, delta 0)."""
    if not any(uses_mrope(images) for images, _, _ in spans):
        return None
    rows, deltas = [], []
    for images, start, end in spans:
        if uses_mrope(images):
            rows.append(mrope_rows(images, start, end))
            deltas.append(rope_delta(images))
        else:
            rows.append(np.tile(np.arange(start, end, dtype=np.int64), (3, 1)))
            deltas.append(0)
    return np.concatenate(rows, axis=1), deltas
