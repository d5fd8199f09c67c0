"""The format of constrained tool calls (`tool_choice` "required" or a named function): the
whole output is one JSON array `[{"name": "f", "arguments": {...}}, ...]`, which the grammar
from `schema.tool_calls_schema` guarantees. Anything else stays content."""

from __future__ import annotations

from radixlm.parsers.tool_call.base import Split, decode_at, make_call


def split(text: str, final: bool, tool_names: frozenset) -> Split:
    """See `base.Split`: nothing is stable until the output is complete."""
    if not final:
        return Split([], 0)
    try:
        array, after = decode_at(text, 0)
    except ValueError:
        return Split([text], len(text))
    calls = [make_call(o, tool_names) for o in array] if isinstance(array, list) else []
    if not calls or None in calls or text[after:].strip():
        return Split([text], len(text))
    return Split(list(calls), len(text))
