"""Acceptance counters of speculative decoding, per request and server-wide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SpecStats:
    """Server-wide counts since start-up. A decode step of one request is one verify step (with
    or without drafts); it emits between 1 and drafts + 1 tokens. `avg_spec_accept_length` is
    SGLang's name: tokens emitted per verify step."""

    verify_steps: int = 0
    emitted: int = 0
    proposed: int = 0
    accepted: int = 0

    def record(self, req: Any, emitted: int, accepted: int) -> None:
        """One verify step of `req` emitted `emitted` tokens, `accepted` of them drafts."""
        self.verify_steps += 1
        self.emitted += emitted
        self.accepted += accepted
        req.spec_verify_ct += 1
        req.spec_accepted_tokens += accepted
        req.spec_decode_tokens += emitted

    def info(self) -> dict[str, Any]:
        return {
            "avg_spec_accept_length": self.emitted / self.verify_steps if self.verify_steps else None,
            "spec_verify_steps": self.verify_steps,
            "spec_draft_tokens": self.proposed,
            "spec_accepted_tokens": self.accepted,
        }


def request_meta(req: Any) -> dict[str, Any]:
    """A speculating request's meta info: verify steps, accepted drafts, tokens per step."""
    steps = req.spec_verify_ct
    return {
        "spec_verify_ct": steps,
        "spec_accepted_tokens": req.spec_accepted_tokens,
        "spec_accept_length": req.spec_decode_tokens / steps if steps else None,
    }
