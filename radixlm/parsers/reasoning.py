"""Reasoning sections: `<think>…</think>` at the start of the output becomes
`reasoning_content`, the rest `content` (`--reasoning-parser`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixlm.parsers.tool_call.base import StrippedText, partial_marker

START, END = "<think>", "</think>"

# name -> whether the output starts inside the reasoning section. DeepSeek-R1's template
# opens `<think>` in the prompt, so all output up to `</think>` is reasoning; Qwen3 writes
# `<think>` itself, and without it (enable_thinking off) the whole output is content.
REASONING_PARSERS: dict[str, bool] = {"deepseek-r1": True, "qwen3": False}


def starts_in_reasoning(name: str) -> bool:
    """Whether format `name` starts inside the reasoning; ValueError naming the known ones."""
    if name not in REASONING_PARSERS:
        raise ValueError(f"unknown reasoning parser {name!r}; known: {sorted(REASONING_PARSERS)}")
    return REASONING_PARSERS[name]


def split_reasoning(text: str, final: bool, forced: bool) -> tuple[str, str, bool]:
    """(reasoning, content, reasoning closed) read so far: both are prefixes of what the whole
    output gives, so a stream can emit them; at `final`, all of `text` is accounted for."""
    lead = len(text) - len(text.lstrip())
    head = text[lead:]
    if head.startswith(START):
        body = lead + len(START)
    elif not final and START.startswith(head):
        return "", "", False  # the marker may be arriving
    elif forced:
        body = 0
    else:
        return "", text, True
    end = text.find(END, body)
    if end >= 0:
        return text[body:end], text[end + len(END) :], True
    keep = 0 if final else partial_marker(text[body:], END)
    return text[body : len(text) - keep], "", final


@dataclass
class ReasoningStream:
    """Feeds output deltas; each step returns (reasoning delta, content delta). Invariant: the
    deltas concatenate to `parse` of the whole output, however the output was cut."""

    forced: bool
    _text: str = ""
    _reasoning: StrippedText = field(default_factory=StrippedText)
    _content: StrippedText = field(default_factory=StrippedText)

    def feed(self, delta: str) -> tuple[str, str]:
        self._text += delta
        return self._step(final=False)

    def finish(self) -> tuple[str, str]:
        return self._step(final=True)

    def _step(self, final: bool) -> tuple[str, str]:
        reasoning, content, closed = split_reasoning(self._text, final, self.forced)
        return self._reasoning.step(reasoning, closed), self._content.step(content, final)


def parse_reasoning(text: str, forced: bool) -> tuple[str, str]:
    """(reasoning, content) of a whole output, each stripped ("" when absent)."""
    stream = ReasoningStream(forced)
    r1, c1 = stream.feed(text)
    r2, c2 = stream.finish()
    return r1 + r2, c1 + c2
