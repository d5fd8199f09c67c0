"""`ToolCallStream`: any format's `split` applied to growing output, as deltas. Parsing the
whole text (`parse`) is the same stream fed once, so streamed and whole answers agree."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixlm.parsers.tool_call.base import SplitFn, StrippedText, ToolCall


@dataclass
class ToolDelta:
    """What one step adds: content text and the calls completed (with their indexes)."""

    content: str = ""
    calls: list[tuple[int, ToolCall]] = field(default_factory=list)


@dataclass
class ToolCallStream:
    """Feeds output deltas to a format's `split`. Invariants: the content deltas concatenate to
    the whole output's content items joined and stripped of surrounding whitespace; each call
    is emitted once, complete, in order."""

    split: SplitFn
    tool_names: frozenset = frozenset()
    _text: str = ""
    _content: StrippedText = field(default_factory=StrippedText)
    _calls_sent: int = 0

    def feed(self, delta: str) -> ToolDelta:
        self._text += delta
        return self._advance(final=False)

    def finish(self) -> ToolDelta:
        return self._advance(final=True)

    def _advance(self, final: bool) -> ToolDelta:
        result = self.split(self._text, final, self.tool_names)
        content = "".join(i for i in result.items if isinstance(i, str))
        calls = [i for i in result.items if isinstance(i, ToolCall)]
        out = ToolDelta(calls=[(k, c) for k, c in enumerate(calls) if k >= self._calls_sent])
        self._calls_sent = max(self._calls_sent, len(calls))
        out.content = self._content.step(content, final)
        return out


def parse(split: SplitFn, text: str, tool_names: frozenset = frozenset()) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole output: content stripped, "" when there is none."""
    stream = ToolCallStream(split, tool_names)
    first = stream.feed(text)
    last = stream.finish()
    return first.content + last.content, [c for _, c in first.calls + last.calls]
