"""SGLang's `sglext` extension of OpenAI responses: per-request cached-token details, returned
when the request sets `return_cached_tokens_details` (what `bench_serving --cache-report` sends).

The object sits at the response level of a non-streaming response and of the stream chunk that
carries a choice's finish_reason (a chunk that still has its choice, so clients that read
`choices[0]` of every chunk keep working)."""

from __future__ import annotations

from typing import Any, Iterable

from radixlm.entrypoints.request_output import OutputAccumulator, cached_tokens_details


def sglext_field(body: Any, accs: Iterable[OutputAccumulator]) -> dict:
    """`{"sglext": {"cached_tokens_details": {...}}}` from the first of `accs` with cached prompt
    tokens when `body` asked for it; `{}` otherwise (nothing asked, or no token came from the cache)."""
    if not getattr(body, "return_cached_tokens_details", False):
        return {}
    for acc in accs:
        details = cached_tokens_details(acc.meta)
        if details is not None:
            return {"sglext": {"cached_tokens_details": details}}
    return {}
