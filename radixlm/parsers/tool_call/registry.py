"""Tool-call formats by name (`--tool-call-parser`), and the guess from a chat template."""

from __future__ import annotations

from typing import Optional

from radixlm.parsers.tool_call import hermes, json_array, llama3, mistral
from radixlm.parsers.tool_call.base import SplitFn

# SGLang's names plus "hermes"; Qwen2.5 and Qwen3 write the Hermes format.
TOOL_CALL_PARSERS: dict[str, SplitFn] = {
    "hermes": hermes.split,
    "qwen": hermes.split,
    "qwen25": hermes.split,
    "qwen3": hermes.split,
    "llama3": llama3.split,
    "mistral": mistral.split,
}
# Formats whose markers are special tokens, which the output text must keep to be parsed.
SPECIAL_TOKEN_MARKERS = frozenset({"llama3", "mistral"})
CONSTRAINED_SPLIT: SplitFn = json_array.split


def tool_split(name: str) -> SplitFn:
    """The format's split function; ValueError naming the known formats otherwise."""
    if name not in TOOL_CALL_PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {sorted(TOOL_CALL_PARSERS)}")
    return TOOL_CALL_PARSERS[name]


def detect_tool_parser(template: Optional[str]) -> Optional[str]:
    """The format a chat template writes tool calls in, from the markers it holds, or None."""
    if not template:
        return None
    if hermes.START in template:
        return "hermes"
    if mistral.MARKER in template:
        return "mistral"
    if llama3.TAG in template:
        return "llama3"
    return None
