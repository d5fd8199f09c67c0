"""A chat choice's output text turned into OpenAI's message fields: `reasoning_content`,
`content` and `tool_calls`, whole (`OutputPlan.message`) or as stream deltas (`ChoiceStream`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Optional

from radixlm.parsers.reasoning import ReasoningStream
from radixlm.parsers.tool_call.base import SplitFn, ToolCall
from radixlm.parsers.tool_call.stream import ToolCallStream


@dataclass(frozen=True)
class OutputPlan:
    """How to read a choice's text. `reasoning_forced` is None when reasoning is not separated
    (else whether the output starts inside it); `split` is None when tool calls are not
    parsed. With neither, the text is the content unchanged."""

    reasoning_forced: Optional[bool] = None
    split: Optional[SplitFn] = None
    tool_names: frozenset = frozenset()
    parallel: bool = True
    cut_stop_token: bool = False  # the text keeps special tokens, so the stop token's shows at its end

    def stream(self) -> "ChoiceStream":
        reasoning = ReasoningStream(self.reasoning_forced) if self.reasoning_forced is not None else None
        tools = ToolCallStream(self.split, self.tool_names) if self.split is not None else None
        return ChoiceStream(reasoning, tools, self.parallel)

    def message(self, text: str) -> dict:
        """The assistant message of a whole output: content None when there is none beside
        tool calls; reasoning_content present only when reasoning is separated."""
        stream = self.stream()
        deltas = stream.feed(text) + stream.finish()
        content = "".join(d.get("content", "") for d in deltas)
        calls = [c for d in deltas for c in d.get("tool_calls", [])]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning_forced is not None:
            message["reasoning_content"] = "".join(d.get("reasoning_content", "") for d in deltas) or None
        if calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
            message["content"] = content or None
        return message


@dataclass
class ChoiceStream:
    """One choice's deltas. Invariant: the deltas of `feed` over any cut of the text, then
    `finish`, add up to `OutputPlan.message` of the whole text; each tool call comes once,
    whole (id, name and arguments in one delta), with consecutive indexes from 0."""

    reasoning: Optional[ReasoningStream]
    tools: Optional[ToolCallStream]
    parallel: bool
    calls_sent: int = 0

    @property
    def has_calls(self) -> bool:
        return self.calls_sent > 0

    def feed(self, text: str) -> list[dict]:
        thought, content = self.reasoning.feed(text) if self.reasoning is not None else ("", text)
        return self._deltas(thought, content, final=False)

    def finish(self) -> list[dict]:
        thought, content = self.reasoning.finish() if self.reasoning is not None else ("", "")
        return self._deltas(thought, content, final=True)

    def _deltas(self, thought: str, content: str, final: bool) -> list[dict]:
        out: list[dict] = [{"reasoning_content": thought}] if thought else []
        if self.tools is None:
            return out + ([{"content": content}] if content else [])
        steps = [self.tools.feed(content)] + ([self.tools.finish()] if final else [])
        for step in steps:
            if step.content:
                out.append({"content": step.content})
            calls = [self._call(c) for _, c in step.calls if self.parallel or self.calls_sent == 0]
            if calls:
                out.append({"tool_calls": calls})
        return out

    def _call(self, call: ToolCall) -> dict:
        index, self.calls_sent = self.calls_sent, self.calls_sent + 1
        return {
            "index": index,
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
