"""Advancing a constrained request's grammar by its sampled token, with or without jump-forward.

Jump-forward: when the grammar admits a single continuation string, that string is appended in
the same step. The sampled token has no KV yet, so it is retokenized together with the forced
text (the tokens the tokenizer would produce, not one model step per token); the scheduler then
runs the new tokens as one extend. Tokens that already have KV are never touched.
"""

from __future__ import annotations

from typing import Any

from radixlm.constrained.limits import MAX_JUMP_FORWARD_CHARS
from radixlm.ipc.finish import FinishAbort, FinishStop


class GrammarStepper:
    """Accepts each sampled token into the request's grammar; finishes the request when the
    grammar is complete (or, defensively, when it refuses a token). `forces_tokens`: whether
    `advance` may return more tokens than the sampled one."""

    forces_tokens = False

    def __init__(self, eos_ids: set[int]) -> None:
        self.eos_ids = eos_ids

    def advance(self, req: Any, token: int) -> list[int]:
        """The tokens to append for sampled `token` (the grammar has accepted them)."""
        self.accept(req, token)
        return [token]

    def accept(self, req: Any, token: int) -> bool:
        """Accept `token`; False when the request must end here (its finish reason is set)."""
        grammar = req.grammar
        if not grammar.accept_token(token):
            req.finished_reason = FinishAbort(f"the grammar does not allow token {token}")
            return False
        if grammar.is_terminated():
            req.finished_reason = FinishStop(token if token in self.eos_ids else None)
            return False
        return True


class JumpForwardStepper(GrammarStepper):
    """Also appends the grammar's forced continuation (at most MAX_JUMP_FORWARD_CHARS per step)
    and counts the tokens it added in `req.jump_forward_tokens`."""

    forces_tokens = True

    def __init__(self, eos_ids: set[int], tokenizer: Any) -> None:
        super().__init__(eos_ids)
        self.tokenizer = tokenizer

    def advance(self, req: Any, token: int) -> list[int]:
        if not self.accept(req, token):
            return [token]
        forced = req.grammar.try_jump_forward()[:MAX_JUMP_FORWARD_CHARS]
        if not forced:
            return [token]
        tokens = self.retokenize(req.grammar, req.fill_ids[-1], token, forced)
        req.jump_forward_tokens += len(tokens) - 1
        return tokens

    def retokenize(self, grammar: Any, prev: int, token: int, forced: str) -> list[int]:
        """Tokens for (text of `token`) + `forced`, re-split at the boundary when the grammar
        accepts that; else `token` followed by the tokens of `forced`; else just `token`.
        On return the grammar has accepted exactly the returned tokens."""
        head = self._token_text(prev, token)
        if head is not None:
            ids = self._encode(head + forced)
            if ids and self._swap(grammar, token, ids, replace=True):
                return ids
        ids = self._encode(forced)
        if ids and self._swap(grammar, token, ids, replace=False):
            return [token] + ids
        return [token]

    def _token_text(self, prev: int, token: int) -> Any:
        """The text `token` adds after `prev` (decoding a pair keeps SentencePiece's leading
        space); None when it is not whole characters."""
        before = self.tokenizer.decode([prev])
        both = self.tokenizer.decode([prev, token])
        if not both.startswith(before) or "\ufffd" in both[len(before) :]:
            return None
        return both[len(before) :]

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids if self.tokenizer.decode(ids) == text else []

    @staticmethod
    def _swap(grammar: Any, token: int, ids: list[int], replace: bool) -> bool:
        """Accept `ids` (after undoing `token` when `replace`); on refusal restore the state."""
        if replace:
            grammar.rollback(1)
        accepted = 0
        for new in ids:
            if not grammar.accept_token(new):
                break
            accepted += 1
            if grammar.is_terminated() and accepted < len(ids):
                break
        else:
            return True
        grammar.rollback(accepted)
        if replace:
            grammar.accept_token(token)
        return False
