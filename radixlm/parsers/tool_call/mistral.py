"""Mistral format: `[TOOL_CALLS]` then either a JSON array of `{"name", "arguments"}` objects
(tokenizer v3) or `name[ARGS]{...}` (v11, one marker per call). Text before the first marker
is content; calls that do not parse stay content."""

from __future__ import annotations

from radixlm.parsers.tool_call.base import Item, Split, decode_at, hold_partial, make_call

MARKER, ARGS = "[TOOL_CALLS]", "[ARGS]"


def split(text: str, final: bool, tool_names: frozenset) -> Split:
    """See `base.Split`: calls are only read once the output is complete or a later marker
    closes them, so a half-written array is held."""
    first = text.find(MARKER)
    if first < 0:
        content, stable = hold_partial(text, 0, (MARKER,), final)
        return Split([content], stable)
    items: list[Item] = [text[:first]]
    segments = text[first:].split(MARKER)[1:]
    for k, segment in enumerate(segments):
        last = k == len(segments) - 1
        parsed = _segment(segment, tool_names)
        if parsed is None and last and not final:
            return Split(items, len(text) - len(MARKER) - len(segment))
        items.extend(parsed if parsed is not None else [MARKER + segment])
    return Split(items, len(text))


def _segment(segment: str, tool_names: frozenset) -> list[Item] | None:
    """The calls of the text after one marker, or None when it is not (yet) a valid run."""
    body = segment.strip()
    if body.startswith("["):
        try:
            array, after = decode_at(body, 0)
        except ValueError:
            return None
        calls = [make_call(o, tool_names) for o in array] if isinstance(array, list) else [None]
        return None if None in calls or not calls or body[after:].strip() else list(calls)
    name, sep, args = body.partition(ARGS)
    if not sep:
        return None
    try:
        obj, after = decode_at(args, 0)
    except ValueError:
        return None
    call = make_call({"name": name.strip(), "arguments": obj}, tool_names)
    return None if call is None or args[after:].strip() else [call]
