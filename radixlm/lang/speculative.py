"""Pure helpers of API speculative execution (`@function(num_api_spec_tokens=N)`).

Completion models: one call generates N tokens past a `gen`; the gen takes the text up to its
stop string and the rest is kept, so following constants that the model already wrote are
matched instead of sent again, and the next gen may be served from it with no call.
Chat models: a whole assistant message (constants and gens) is generated in one call and the
gens' values are cut out of the reply by matching the constants.
"""

from __future__ import annotations

from typing import Optional, Sequence

from radixlm.lang.ir import Constant, Expr, Gen, SamplingSpec


def cut_at_stop(text: str, stops: Sequence[str]) -> Optional[tuple[str, str]]:
    """(value before the earliest stop, rest starting at that stop), or None without a stop."""
    found = [(text.find(s), s) for s in stops if s and text.find(s) >= 0]
    if not found:
        return None
    at = min(found)[0]
    return text[:at], text[at:]


def consume_constant(speculated: str, value: str) -> str:
    """What remains speculated after the program appends `value`: the rest on a match, else ''."""
    return speculated[len(value) :] if speculated.startswith(value) else ""


def match_reply(reply: str, items: Sequence[Expr], defaults: SamplingSpec) -> Optional[list[str]]:
    """The value of every `Gen` in `items` (constants and gens of one assistant message), cut out
    of `reply`; None when the reply does not follow the constants. A gen ends at its stop
    string, else where the next constant starts, else (the last item) at the reply's end."""
    pos, values = 0, []
    for i, item in enumerate(items):
        if isinstance(item, Constant):
            if not reply.startswith(item.value, pos):
                return None
            pos += len(item.value)
            continue
        end = _gen_end(reply, pos, item, items[i + 1] if i + 1 < len(items) else None, defaults)
        if end is None:
            return None
        values.append(reply[pos:end])
        pos = end
    return values


def _gen_end(reply: str, pos: int, gen: Gen, following: Optional[Expr], defaults: SamplingSpec) -> Optional[int]:
    stops = gen.params.merged_over(defaults).stops
    if isinstance(following, Constant) and following.value:
        stops = stops + [following.value]
    hits = [reply.find(s, pos) for s in stops if reply.find(s, pos) >= 0]
    if hits:
        return min(hits)
    return len(reply) if following is None else None


def chat_spec_items(items: Sequence[Expr]) -> bool:
    """True when `items` (between an assistant begin and end) are only constants and gens,
    at least one gen among them."""
    return any(isinstance(e, Gen) for e in items) and all(isinstance(e, (Constant, Gen)) for e in items)
