"""NGRAM drafting (prompt lookup): the tokens that followed the latest earlier occurrence of the
sequence's last n tokens, n tried from the longest window down. Pure Python, no model."""

from __future__ import annotations

from typing import Any


class NgramDrafter:
    """Invariant: `propose` returns at most `limit` tokens, each copied from the request's own
    prompt and output; it never looks at anything but the request's tokens."""

    def __init__(self, min_n: int, max_n: int, num_drafts: int) -> None:
        assert 1 <= min_n <= max_n and num_drafts >= 1
        self.min_n, self.max_n, self.num_drafts = min_n, max_n, num_drafts

    def propose(self, reqs: list[Any], limits: list[int]) -> list[list[int]]:
        """Draft tokens for each request (at most `min(limits[i], num_drafts)` for request i)."""
        return [
            self.lookup(req.fill_ids, min(limit, self.num_drafts)) if limit > 0 else []
            for req, limit in zip(reqs, limits)
        ]

    def check_leak(self) -> None:
        """Nothing to leak: the drafter keeps no state between steps."""

    def lookup(self, tokens: list[int], count: int) -> list[int]:
        """Up to `count` tokens following the most recent earlier match of the longest suffix of
        `tokens` (between `max_n` and `min_n` tokens long) that occurs earlier; [] if none does."""
        total = len(tokens)
        for n in range(min(self.max_n, total - 1), self.min_n - 1, -1):
            follow = _latest_match(tokens, n)
            if follow is not None:
                return tokens[follow : follow + count]
        return []


def _latest_match(tokens: list[int], n: int) -> int | None:
    """Index just after the latest occurrence of `tokens[-n:]` that ends before the last token
    (so at least one token follows it), or None."""
    total = len(tokens)
    suffix = tokens[total - n :]
    last = suffix[-1]
    end = total - 2  # index of the match's last token: at most total - 2
    while end >= n - 1:
        # list.index from the right: scan backwards for the suffix's last token.
        try:
            end = _rindex(tokens, last, n - 1, end)
        except ValueError:
            return None
        if tokens[end - n + 1 : end + 1] == suffix:
            return end + 1
        end -= 1
    return None


def _rindex(tokens: list[int], value: int, lo: int, hi: int) -> int:
    """Largest i in [lo, hi] with tokens[i] == value; ValueError if none."""
    for i in range(hi, lo - 1, -1):
        if tokens[i] == value:
            return i
    raise ValueError(value)
