"""Constrained output after a reasoning section: the grammar starts once `</think>` is out.

A reasoning model asked for JSON (or a regex, or EBNF) first thinks in free text, then answers.
`GatedGrammar` wraps the request's grammar so the reasoning section is unconstrained (except that
it may not end the output) and the answer after it is held to the grammar exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from radixlm.constrained.base import Grammar

# Where the output stands: before anything (may open a reasoning section), inside the reasoning,
# or in the constrained answer (absorbing).
MAY_OPEN, REASONING, ANSWER = 0, 1, 2


@dataclass(frozen=True)
class ReasoningGate:
    """The markers' token ids, whether the output starts inside the reasoning (the template
    opened it, as DeepSeek-R1's does) and the ids that may not end the output while reasoning."""

    start_id: int
    end_id: int
    opened: bool
    stop_ids: tuple[int, ...]


def reasoning_gate(tokenizer: Any, start: str, end: str, opened: bool, stop_ids: set[int]) -> ReasoningGate:
    """The gate for `tokenizer`; ValueError when a marker is not one token of its vocabulary
    (the gate reads whole tokens, as reasoning models' tokenizers write them)."""
    ids = []
    for marker in (start, end):
        encoded = tokenizer.encode(marker, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"a constraint after the reasoning section needs {marker!r} to be one token of the model's "
                f"vocabulary (it encodes to {len(encoded)}); send separate_reasoning=false to constrain the "
                "whole output"
            )
        ids.append(encoded[0])
    return ReasoningGate(ids[0], ids[1], opened, tuple(sorted(stop_ids)))


class GatedGrammar(Grammar):
    """Invariant: `_trail[i]` is (the phase before output token i, whether token i went to
    `inner`), and `inner`'s state is the result of exactly the tokens marked as gone to it, so
    rollback can undo across the end marker."""

    def __init__(self, inner: Grammar, gate: ReasoningGate, phase: Optional[int] = None) -> None:
        self.inner, self.gate = inner, gate
        self._phase = phase if phase is not None else (REASONING if gate.opened else MAY_OPEN)
        self._trail: list[tuple[int, bool]] = []

    def accept_token(self, token: int) -> bool:
        phase, fed = self._phase, False
        if phase == ANSWER:
            ok = fed = self.inner.accept_token(token)
        elif phase == REASONING:
            ok = token not in self.gate.stop_ids
            if ok and token == self.gate.end_id:
                self._phase = ANSWER
        elif token == self.gate.start_id:
            ok, self._phase = True, REASONING
        else:
            ok = fed = self.inner.accept_token(token)
            if ok:
                self._phase = ANSWER
        if ok:
            self._trail.append((phase, fed))
        return ok

    def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
        if self._phase == ANSWER:
            self.inner.fill_vocab_mask(bitmask, row)
        elif self._phase == REASONING:
            bitmask[row] = -1
            for token in self.gate.stop_ids:
                _set_bit(bitmask, row, token, False)
        else:
            self.inner.fill_vocab_mask(bitmask, row)
            _set_bit(bitmask, row, self.gate.start_id, True)

    def is_terminated(self) -> bool:
        return self._phase == ANSWER and self.inner.is_terminated()

    def try_jump_forward(self) -> str:
        return self.inner.try_jump_forward() if self._phase == ANSWER else ""

    def copy(self) -> "GatedGrammar":
        other = GatedGrammar(self.inner.copy(), self.gate, self._phase)
        other._trail = list(self._trail)
        return other

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        undone = self._trail[-num_tokens:]
        fed = sum(1 for _, went in undone if went)
        if fed:
            self.inner.rollback(fed)
        self._phase = undone[0][0]
        del self._trail[-num_tokens:]


def _set_bit(bitmask: torch.Tensor, row: int, token: int, value: bool) -> None:
    word, bit = divmod(token, 32)
    if word >= bitmask.shape[1]:
        return
    current = int(bitmask[row, word]) & 0xFFFFFFFF
    current = current | (1 << bit) if value else current & ~(1 << bit)
    bitmask[row, word] = current - (1 << 32) if current >= 1 << 31 else current
