"""Processed images as they travel from the front to the model (pure data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class ImageInput:
    """One image of a prompt. Invariant: the prompt's ids hold `pad_value` at positions
    [offset, offset + length), one per embedding row the encoder produces for `pixel_values`;
    `pad_value` >= the vocabulary size (it never names a real token) and is derived from the
    pixels' content hash, so the radix tree matches an image span only for the same image."""

    pixel_values: np.ndarray  # [3, H, W] float32 ([tiles, 3, H, W] for LLaVA-NeXT, [patches, C*T*P*P] for Qwen2-VL)
    offset: int
    length: int
    pad_value: int
    image_size: Optional[tuple[int, int]] = None  # the original (height, width), where the layout depends on it
    grid_thw: Optional[tuple[int, int, int]] = None  # Qwen2-VL: the patch grid (temporal, height, width)
    merge: int = 1  # Qwen2-VL: patches merged per side into one embedding row
    # Qwen2-VL, where exact: `pixel_values` holds uint8 codes of the float32 patches and this
    # [channels, 256] float32 table their values (radixlm.multimodal.pixel_codes)
    pixel_table: Optional[np.ndarray] = None

    @property
    def llm_grid(self) -> Optional[tuple[int, int, int]]:
        """The (t, h, w) grid of the embedding rows (Qwen2-VL's M-RoPE layout), else None."""
        if self.grid_thw is None:
            return None
        t, h, w = self.grid_thw
        return t, h // self.merge, w // self.merge


@dataclass(frozen=True)
class ImageSlice:
    """Embedding rows [start, start + count) of `image` go to rows [row, row + count) of a
    forward batch (a chunk of a prefill may hold only part of an image's span)."""

    image: ImageInput
    row: int
    start: int
    count: int


def chunk_slices(images: list[ImageInput], start: int, end: int, row: int) -> list[ImageSlice]:
    """The parts of `images` inside prompt positions [start, end), whose first position is
    batch row `row`."""
    out = []
    for image in images:
        lo, hi = max(start, image.offset), min(end, image.offset + image.length)
        if lo < hi:
            out.append(ImageSlice(image, row + lo - start, lo - image.offset, hi - lo))
    return out


def chunk_end(images: Optional[list[ImageInput]], start: int, end: int, page: int = 1) -> int:
    """Where a prefill chunk of prompt positions [start, end) should end so that no image span
    straddles its end (an image cut there would be encoded once per chunk it touches): `end`
    itself when it is outside every span, else the start of the span it falls in, moved down
    to keep the chunk a multiple of `page` tokens. A span that begins at (or within one page
    of) `start` is larger than the chunk and is cut at `end` after all."""
    for image in images or ():
        lo, hi = image.offset, image.offset + image.length
        if lo < end < hi:
            cut = start + (lo - start) // page * page
            return cut if cut > start else end
    return end
