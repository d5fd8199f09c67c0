"""Where image inputs may come from. Nothing received over the network makes the server read a
file or open a connection unless the operator allowed it:

- `data:` URLs carry the bytes inline and are always accepted (nothing is fetched);
- local files (`file://` URLs or plain paths) only under `--allowed-local-media-path`, judged
  after resolving symlinks and `..`;
- `http(s)://` URLs only with `--enable-remote-media`; every other scheme is refused.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlparse

REMOTE_SCHEMES = ("http", "https")
TEXT_ONLY = "the served model accepts text only: image inputs need a vision model"
FETCH_TIMEOUT_S = 10.0
MAX_MEDIA_BYTES = 20 << 20


class MediaRejected(ValueError):
    """A media source the policy does not allow, or that cannot be read; the message says why."""


@dataclass(frozen=True)
class MediaSource:
    kind: str  # "data", "file" or "remote"
    location: str  # the data URL, the resolved file path, or the URL


@dataclass(frozen=True)
class MediaPolicy:
    """Invariant: `check` never reads a file or opens a connection; `load` reads only what
    `check` accepted."""

    allowed_local_path: Optional[str] = None
    allow_remote: bool = False

    def check(self, url: str) -> MediaSource:
        """Classify `url` and vet it against the policy; raises MediaRejected naming the rule."""
        if not isinstance(url, str) or not url:
            raise MediaRejected("an image source must be a non-empty URL string")
        if url.startswith("data:"):
            return MediaSource("data", url)
        scheme = urlparse(url).scheme.lower()
        if scheme in REMOTE_SCHEMES:
            if not self.allow_remote:
                raise MediaRejected(
                    "remote image URLs are disabled on this server (start it with --enable-remote-media to allow them)"
                )
            return MediaSource("remote", url)
        if scheme in ("file", ""):
            return MediaSource("file", self._local_path(url, scheme))
        raise MediaRejected(f"image URL scheme {scheme!r} is not supported (use data:, file: or http(s):)")

    def _local_path(self, url: str, scheme: str) -> str:
        if self.allowed_local_path is None:
            raise MediaRejected(
                "local image files are disabled on this server "
                "(start it with --allowed-local-media-path DIR to allow files under DIR)"
            )
        parsed = urlparse(url)
        if scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise MediaRejected("file: URLs must name a local path (no host)")
        path = unquote(parsed.path) if scheme == "file" else url
        root = os.path.realpath(self.allowed_local_path)
        resolved = os.path.realpath(path)
        if os.path.commonpath([root, resolved]) != root:
            raise MediaRejected("the image file is outside --allowed-local-media-path")
        return resolved

    def load(self, source: MediaSource, max_bytes: int = MAX_MEDIA_BYTES) -> bytes:
        """The bytes of an accepted source (at most `max_bytes`); MediaRejected if unreadable."""
        if source.kind == "data":
            return _decode_data_url(source.location, max_bytes)
        if source.kind == "file":
            return _read_file(source.location, max_bytes)
        return _fetch(source.location, max_bytes)


def vet_images(policy: MediaPolicy, urls: list[str], accepts_images: bool = False) -> None:
    """Every image source is checked against the policy first (so a refused source is named
    as such), then all are refused unless the served model `accepts_images`. Nothing is read."""
    for url in urls:
        policy.check(url)
    if urls and not accepts_images:
        raise MediaRejected(TEXT_ONLY)


def _decode_data_url(url: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise MediaRejected("a data: image URL must be base64 (data:<type>;base64,<bytes>)")
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise MediaRejected(f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaRejected("the data: image URL is not valid base64") from None


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise MediaRejected(f"cannot read the image file: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise MediaRejected(f"the image is larger than {max_bytes} bytes")
    return data


def _fetch(url: str, max_bytes: int) -> bytes:
    """GET without following redirects (a redirect could point anywhere), bounded in time and size."""
    import httpx

    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=False) as response:
            if response.status_code != 200:
                raise MediaRejected(f"fetching the image URL answered HTTP {response.status_code}")
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise MediaRejected(f"the image is larger than {max_bytes} bytes")
            return data
    except httpx.HTTPError as exc:
        raise MediaRejected(f"cannot fetch the image URL: {type(exc).__name__}") from None
