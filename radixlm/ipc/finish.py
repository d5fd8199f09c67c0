"""Why a request finished: a small closed family of frozen values, one per outcome.

The scheduler sets one on a request when it ends and sends it with the request's last
`ReqOutput`; the front turns it into the user-visible `meta_info["finish_reason"]` dict with
`to_json()`; `kind` is the OpenAI-style finish_reason string. Plain frozen dataclasses, so
they pickle across the scheduler's pipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Union

BAD_REQUEST, SERVER_ERROR, UNAVAILABLE = 400, 500, 503


@dataclass(frozen=True)
class FinishLength:
    """The request produced `length` tokens: its `max_new_tokens`, or fewer when the context ran out."""

    length: int
    kind: ClassVar[str] = "length"

    def to_json(self) -> dict:
        return {"type": self.kind, "length": self.length}


@dataclass(frozen=True)
class FinishStop:
    """A stop condition matched: a stop token id, a stop string, or (None) a grammar that completed."""

    matched: Union[int, str, None]
    kind: ClassVar[str] = "stop"

    def to_json(self) -> dict:
        return {"type": self.kind, "matched": self.matched}


@dataclass(frozen=True)
class FinishAbort:
    """The request was ended before a natural stop. `status_code` names a failure the caller
    should see as an HTTP error (400: the request was invalid, >= 500: the runtime failed);
    None for an abort the caller asked for."""

    message: str
    status_code: Optional[int] = None
    kind: ClassVar[str] = "abort"

    def to_json(self) -> dict:
        out: dict = {"type": self.kind, "message": self.message}
        if self.status_code is not None:
            out["status_code"] = self.status_code
        return out

    @property
    def is_rejection(self) -> bool:
        """The request itself was invalid (answer 400)."""
        return self.status_code == BAD_REQUEST

    @property
    def is_failure(self) -> bool:
        """The runtime could not serve the request (a 5xx)."""
        return self.status_code is not None and self.status_code >= SERVER_ERROR


FinishReason = Union[FinishLength, FinishStop, FinishAbort]
