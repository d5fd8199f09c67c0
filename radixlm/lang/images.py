"""Images for `image(...)`: a file path, an http(s)/data URL, or raw bytes."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Optional, Union

_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


@dataclass(frozen=True)
class ImageData:
    """Either `data` (bytes, with its MIME type) or a `url` the API fetches itself."""

    data: Optional[bytes] = None
    mime: str = "image/png"
    url: Optional[str] = None

    def base64(self) -> str:
        return base64.b64encode(self.data or b"").decode()

    def data_url(self) -> str:
        """An URL for OpenAI-style `image_url` parts (the URL itself, or a base64 data URL)."""
        return self.url if self.url is not None else f"data:{self.mime};base64,{self.base64()}"


def load_image(source: Union[str, bytes, ImageData]) -> ImageData:
    """Read a path into bytes; keep URLs as they are. Raises FileNotFoundError for a missing path."""
    if isinstance(source, ImageData):
        return source
    if isinstance(source, (bytes, bytearray)):
        return ImageData(data=bytes(source), mime=sniff_mime(bytes(source)))
    if not isinstance(source, str):
        raise TypeError(f"image() takes a path, a URL or bytes, not {type(source).__name__}")
    if source.startswith(("http://", "https://", "data:")):
        return ImageData(url=source)
    with open(source, "rb") as f:
        data = f.read()
    return ImageData(data=data, mime=sniff_mime(data))


def sniff_mime(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return "image/png"
