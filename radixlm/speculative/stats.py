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
        """The counters and the two ratios made of them (`spec_ratios`)."""
        counts = {
            "spec_verify_steps": self.verify_steps,
            "spec_emitted_tokens": self.emitted,
            "spec_draft_tokens": self.proposed,
            "spec_accepted_tokens": self.accepted,
        }
        return {**counts, **spec_ratios(counts)}


SPEC_COUNTERS = ("spec_verify_steps", "spec_emitted_tokens", "spec_draft_tokens", "spec_accepted_tokens")


def spec_ratios(counts: dict[str, Any]) -> dict[str, Any]:
    """`avg_spec_accept_length` (tokens per verify step) and `spec_accept_rate` (accepted /
    proposed drafts) of `SPEC_COUNTERS` values, None while their denominator is 0."""
    steps, drafts = counts["spec_verify_steps"], counts["spec_draft_tokens"]
    return {
        "avg_spec_accept_length": counts["spec_emitted_tokens"] / steps if steps else None,
        "spec_accept_rate": counts["spec_accepted_tokens"] / drafts if drafts else None,
    }
