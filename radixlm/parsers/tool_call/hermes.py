"""Hermes / Qwen2.5 / Qwen3 format: each call is a JSON object between `<tool_call>` and
`</tool_call>`, e.g. `<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>`.
Text around the blocks is content; a block that does not hold one valid call stays content."""

from __future__ import annotations

from radixlm.parsers.tool_call.base import Item, Split, decode_at, hold_partial, make_call

START, END = "<tool_call>", "</tool_call>"


def split(text: str, final: bool, tool_names: frozenset) -> Split:
    """See `base.Split`. An unclosed block is held while the stream runs; at the end it is a
    call if its remaining text is exactly one call (a model stopped before `</tool_call>`),
    else content."""
    items: list[Item] = []
    pos = 0
    while True:
        start = text.find(START, pos)
        if start < 0:
            content, stable = hold_partial(text, pos, (START,), final)
            items.append(content)
            return Split(items, stable)
        items.append(text[pos:start])
        end = text.find(END, start)
        if end < 0:
            if not final:
                return Split(items, start)
            items.append(_block(text[start + len(START) :], tool_names) or text[start:])
            return Split(items, len(text))
        items.append(_block(text[start + len(START) : end], tool_names) or text[start : end + len(END)])
        pos = end + len(END)


def _block(body: str, tool_names: frozenset) -> Item | None:
    """The call a block holds, or None unless the block is exactly one valid call."""
    try:
        obj, after = decode_at(body, 0)
    except ValueError:
        return None
    if body[after:].strip():
        return None
    return make_call(obj, tool_names)
