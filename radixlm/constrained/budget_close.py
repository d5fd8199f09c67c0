"""Closing a constrained output validly before its token budget runs out (opt-in per request).

`ClosingGrammar` wraps a request's grammar. While the remaining budget is large it changes
nothing. Within `WINDOW` tokens of `max_new_tokens` it computes, on a copy of the matcher, a
short completion: at each step the first token of `closers` (end-of-sequence, then `"`, `}`,
`]`, `0`, ... as single tokens) that the grammar accepts, until the grammar is complete. Once
that completion plus `MARGIN` no longer fits in the remaining budget, the mask admits only its
next token, so the output ends complete (finish reason `stop`) instead of being cut.

Neither backend offers "the shortest completion" (xgrammar and llguidance expose masks, forced
text and rollback, not distances), so the completion is greedy: it is exact for the grammar
(every token is accepted by the matcher) but not always the shortest, and a sampled token that
opens deep nesting just before the window may still leave too little budget; then the request
ends with finish reason `length` as without the option.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from radixlm.constrained.base import Grammar

WINDOW = 64  # look for a completion only this close to the budget (it costs matcher steps)
MARGIN = 4  # start closing while this many spare tokens remain
CLOSER_CHARS = '"}]0,:nul[{ tr' + "efas-1.xyz"


def closer_tokens(tokenizer: Any, eos_ids: set[int]) -> list[int]:
    """End-of-sequence ids, then the single-token spellings of CLOSER_CHARS, in that order (a
    space also as byte-level BPE's "\u0120" and SentencePiece's "\u2581")."""
    vocab = tokenizer.get_vocab()
    out = sorted(eos_ids)
    for ch in CLOSER_CHARS:
        spellings = (ch, "\u0120", "\u2581") if ch == " " else (ch,)
        for token in (vocab.get(s) for s in spellings):
            if token is not None and token not in out:
                out.append(token)
    return out


def greedy_completion(grammar: Grammar, closers: list[int], limit: int) -> Optional[list[int]]:
    """Tokens that complete `grammar` (taken greedily from `closers`), at most `limit` of them;
    None when that fails. `grammar` itself is not changed."""
    probe, out = grammar.copy(), []
    while not probe.is_terminated():
        if len(out) >= limit:
            return None
        token = next((t for t in closers if probe.accept_token(t)), None)
        if token is None:
            return None
        out.append(token)
    return out


class ClosingGrammar(Grammar):
    """Invariant: `used` is the number of output tokens the inner grammar has accepted since the
    request started, so `budget - used` is the number the request may still generate; `plan`,
    once set, is a completion from the current state that the mask is forcing."""

    def __init__(self, inner: Grammar, budget: int, closers: list[int], used: int = 0) -> None:
        self.inner, self.budget, self.closers, self.used = inner, budget, closers, used
        self.plan: Optional[list[int]] = None

    def accept_token(self, token: int) -> bool:
        if not self.inner.accept_token(token):
            return False
        self.used += 1
        if self.plan and self.plan[0] == token:
            self.plan = self.plan[1:]
        else:
            self.plan = None
        return True

    def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
        forced = self._next_forced()
        if forced is None:
            self.inner.fill_vocab_mask(bitmask, row)
            return
        bitmask[row].zero_()
        word, bit = divmod(forced, 32)
        bitmask[row, word] = (1 << bit) if bit < 31 else -(1 << 31)  # int32 words: bit 31 is the sign

    def _next_forced(self) -> Optional[int]:
        remaining = self.budget - self.used
        if self.plan:
            return self.plan[0]
        if remaining > WINDOW or remaining <= 0:
            return None
        plan = greedy_completion(self.inner, self.closers, remaining)
        if plan and len(plan) + MARGIN >= remaining:
            self.plan = plan
            return plan[0]
        return None

    def is_terminated(self) -> bool:
        return self.inner.is_terminated()

    def try_jump_forward(self) -> str:
        return "" if self.plan else self.inner.try_jump_forward()

    def copy(self) -> "ClosingGrammar":
        twin = ClosingGrammar(self.inner.copy(), self.budget, self.closers, self.used)
        twin.plan = None if self.plan is None else list(self.plan)
        return twin

    def rollback(self, num_tokens: int) -> None:
        self.inner.rollback(num_tokens)
        self.used -= num_tokens
        self.plan = None
