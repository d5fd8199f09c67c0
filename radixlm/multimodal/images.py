"""Image bytes to a checked RGB PIL image: every way an image can be bad is a ValueError
naming the image and the problem (not an image, truncated or corrupt, too many pixels)."""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

MAX_IMAGE_PIXELS = 8192 * 8192


class ImageError(ValueError):
    """A request's image cannot be used; the message names which and why."""


def decode_image(data: bytes, index: int, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """The RGB image of `data` (image `index` of the request), fully decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"image {index} is not an image (no known image format)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image {index} has too many pixels (at most {max_pixels})") from None
    check_pixels(image, index, max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image {index} is truncated or corrupt ({exc})") from None
    return image.convert("RGB")


def check_pixels(image: Any, index: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """ImageError unless the (PIL) image has at most `max_pixels` pixels (read from its header)."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"image {index} is {width}x{height} pixels, more than the {max_pixels} allowed")


def engine_image_bytes(source: Any, index: int) -> Any:
    """An `Engine` caller's image (trusted, in process): bytes, a PIL image, a `data:` URL, a
    local path, or base64 text; returns bytes or the PIL image. (The HTTP server turns its
    sources into bytes under the media policy first.)"""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if hasattr(source, "convert") and hasattr(source, "size"):
        return source
    if not isinstance(source, str) or not source:
        raise ImageError(f"image {index} must be bytes, a PIL image or a string, got {type(source).__name__}")
    if source.startswith("data:"):
        source = source.partition(",")[2]
    elif os.path.isfile(source):
        with open(source, "rb") as f:
            return f.read()
    try:
        return base64.b64decode(source, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"image {index} is neither a readable file, a data: URL nor base64") from None
