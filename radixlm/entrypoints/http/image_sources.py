"""The images of an HTTP request as bytes, read under the media policy: `data:` URLs, files
under `--allowed-local-media-path`, http(s) with `--enable-remote-media`, and (native API, as
SGLang takes them) bare base64 text. Runs on the preparation thread (it may read files)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from radixlm.entrypoints.http.media import MediaPolicy, MediaRejected

MIN_BASE64_CHARS = 16


def load_image_sources(policy: MediaPolicy, image_data: Any) -> Any:
    """`image_data` with every source replaced by its bytes, same nesting (None entries kept);
    MediaRejected naming a refused or unreadable source."""
    if image_data is None:
        return None
    if isinstance(image_data, list):
        return [load_image_sources(policy, item) for item in image_data]
    return _load_one(policy, image_data)


def _load_one(policy: MediaPolicy, source: Any) -> bytes:
    if not isinstance(source, str):
        raise MediaRejected(f"an image source must be a string (URL, path or base64), got {type(source).__name__}")
    raw = bare_base64(source)
    if raw is not None:
        return raw
    return policy.load(policy.check(source))


def bare_base64(text: str) -> bytes | None:
    """The bytes of `text` when it is bare base64: no ':' or '.' (which every URL and every
    file name with an extension has), a multiple of 4 long, valid base64."""
    if len(text) < MIN_BASE64_CHARS or len(text) % 4 or ":" in text or "." in text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
