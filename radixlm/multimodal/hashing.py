"""Content hashes of processed images and the pad ids the radix tree sees in their place."""

from __future__ import annotations

import hashlib

import numpy as np

PAD_RANGE = 1 << 30


def image_digest(pixel_values: np.ndarray, layout: tuple = ()) -> bytes:
    """SHA-256 of the processed pixels (shape, dtype and bytes) and their `layout` (Qwen2-VL's
    patch grid, which the pixels' shape does not show): equal only for equal inputs."""
    h = hashlib.sha256()
    h.update(repr((pixel_values.shape, str(pixel_values.dtype), tuple(layout))).encode())
    h.update(np.ascontiguousarray(pixel_values).tobytes())
    return h.digest()


def pad_value(digest: bytes, vocab_size: int) -> int:
    """The id an image's placeholder span holds: in [vocab_size, vocab_size + 2**30), so it
    never equals a real token, and equal for equal digests."""
    return vocab_size + int.from_bytes(digest[:8], "little") % PAD_RANGE
