"""What every tool-call format shares: the parsed items, the `split` contract each format
implements, and the JSON helpers the formats use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union


@dataclass(frozen=True)
class ToolCall:
    """One parsed call. Invariant: `arguments` is the JSON text of an object (compact)."""

    name: str
    arguments: str


Item = Union[str, ToolCall]  # a run of plain content, or one call


@dataclass(frozen=True)
class Split:
    """A format's reading of text: `items` cover `text[:stable]` in order; `text[stable:]` is
    held back (an unfinished call, or the start of a marker). Invariant: once a prefix of a
    stream has been split, the items before its `stable` point never change as text is
    appended, so a stream may emit them."""

    items: list[Item]
    stable: int


# split(text, final, tool_names) -> Split; with final=True, stable == len(text).
SplitFn = Callable[[str, bool, frozenset], Split]


def partial_marker(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker` (the part a
    stream must hold back because the marker may be arriving)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def hold_partial(text: str, pos: int, markers: tuple[str, ...], final: bool) -> tuple[str, int]:
    """The content `text[pos:]` up to any partial marker at its end, and where it stops."""
    tail = text[pos:]
    keep = 0 if final else max(partial_marker(tail, m) for m in markers)
    return tail[: len(tail) - keep], len(text) - keep


def make_call(
    obj: Any, tool_names: frozenset, args_keys: tuple[str, ...] = ("arguments", "parameters")
) -> Optional[ToolCall]:
    """A ToolCall from a decoded `{"name": ..., "arguments": {...}}` object, or None when it is
    not one (not a dict, no string name, arguments not an object, or a name not among
    `tool_names` when that set is non-empty)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if tool_names and obj["name"] not in tool_names:
        return None
    args = next((obj[k] for k in args_keys if k in obj), {})
    if isinstance(args, str):  # some models send the arguments as JSON text
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


_DECODER = json.JSONDecoder()


def decode_at(text: str, pos: int) -> tuple[Any, int]:
    """One JSON value starting at `pos` (after whitespace) and the index after it; raises
    ValueError when none is complete there."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return _DECODER.raw_decode(text, pos)


@dataclass
class StrippedText:
    """Emits a growing text stripped of surrounding whitespace, holding trailing whitespace
    until more text or the end shows it is inside."""

    sent: int = 0

    def step(self, text: str, closed: bool) -> str:
        ready = text.strip() if closed else text.lstrip()
        ready = ready if closed else ready[: len(ready.rstrip())]
        out = ready[self.sent :]
        self.sent = max(self.sent, len(ready))
        return out
