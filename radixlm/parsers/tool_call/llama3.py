"""Llama 3.1 / 3.2 JSON format: calls are JSON objects `{"name": "f", "parameters": {...}}`,
after an optional `<|python_tag|>` and separated by `;`. Without the tag, only output that
starts with `{` can be a call; with it, the text before the tag is content. Output that does
not parse as calls stays content."""

from __future__ import annotations

from radixlm.parsers.tool_call.base import Item, Split, ToolCall, decode_at, hold_partial, make_call

TAG = "<|python_tag|>"


def split(text: str, final: bool, tool_names: frozenset) -> Split:
    """See `base.Split`: calls are only read once the whole run of them is complete."""
    tag = text.find(TAG)
    if tag >= 0:
        calls = _calls(text, tag + len(TAG), final, tool_names)
        if calls is None:
            return Split([text[:tag]], tag)
        return Split([text[:tag], *calls] if calls else [text], len(text))
    start = len(text) - len(text.lstrip())
    if text[start:].startswith("{"):
        calls = _calls(text, start, final, tool_names)
        if calls is None:
            return Split([], 0)
        return Split(calls or [text], len(text))
    content, stable = hold_partial(text, 0, (TAG,), final)
    return Split([content], stable)


def _calls(text: str, pos: int, final: bool, tool_names: frozenset) -> list[Item] | None:
    """The calls from `pos` to the end; None while they may still be arriving; [] when the
    text is not a run of calls (then it is all content)."""
    calls: list[ToolCall] = []
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ";"):
            pos += 1
        if pos == len(text):
            return list(calls) if calls or final else None
        try:
            obj, pos = decode_at(text, pos)
        except ValueError:
            return [] if final else None
        call = make_call(obj, tool_names, ("parameters", "arguments"))
        if call is None:
            return []
        calls.append(call)
