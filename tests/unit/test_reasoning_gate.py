"""GatedGrammar: free reasoning (never ending the output), then the inner grammar exactly;
rollback and copy across the end marker; the gate needs single-token markers."""

from __future__ import annotations

import pytest
import torch

from radixlm.constrained.base import Grammar
from radixlm.constrained.reasoning_gate import GatedGrammar, ReasoningGate, reasoning_gate

VOCAB, START, END, EOS = 64, 60, 61, 1


class Sequence(Grammar):
    """Accepts exactly `want` then EOS."""

    def __init__(self, want: list[int]) -> None:
        self.want, self.pos = want, 0

    def accept_token(self, token: int) -> bool:
        if self.pos < len(self.want) and token == self.want[self.pos]:
            self.pos += 1
            return True
        if self.pos == len(self.want) and token == EOS:
            self.pos += 1
            return True
        return False

    def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
        nxt = self.want[self.pos] if self.pos < len(self.want) else EOS
        bitmask[row] = 0
        bitmask[row, nxt // 32] = 1 << (nxt % 32)

    def is_terminated(self) -> bool:
        return self.pos > len(self.want)

    def try_jump_forward(self) -> str:
        return "x" if self.pos < len(self.want) else ""

    def copy(self) -> "Sequence":
        other = Sequence(self.want)
        other.pos = self.pos
        return other

    def rollback(self, num_tokens: int) -> None:
        self.pos -= num_tokens


def allowed(grammar: Grammar) -> set[int]:
    mask = torch.zeros((1, 2), dtype=torch.int32)
    grammar.fill_vocab_mask(mask, 0)
    bits = [(int(mask[0, w]) >> b) & 1 for w in range(2) for b in range(32)]
    return {i for i, bit in enumerate(bits) if bit}


def gated(opened: bool) -> GatedGrammar:
    return GatedGrammar(Sequence([5, 6]), ReasoningGate(START, END, opened, (EOS,)))


def test_opened_reasoning_is_free_but_cannot_end_then_the_grammar_holds() -> None:
    g = gated(opened=True)
    assert allowed(g) == set(range(VOCAB)) - {EOS} and g.try_jump_forward() == ""
    assert not g.accept_token(EOS)
    for token in (9, 5, 40, END):
        assert g.accept_token(token)
    assert allowed(g) == {5} and g.try_jump_forward() == "x"
    assert not g.accept_token(9) and g.accept_token(5) and g.accept_token(6) and g.accept_token(EOS)
    assert g.is_terminated()


def test_unopened_output_may_open_or_answer_at_once() -> None:
    g = gated(opened=False)
    assert allowed(g) == {5, START}
    answer = g.copy()
    assert answer.accept_token(5) and allowed(answer) == {6}  # no reasoning: the grammar from the first token
    assert not answer.accept_token(START)
    assert g.accept_token(START) and allowed(g) == set(range(VOCAB)) - {EOS}
    assert g.accept_token(END) and allowed(g) == {5}


def test_rollback_crosses_the_end_marker() -> None:
    g = gated(opened=True)
    for token in (9, END, 5):
        assert g.accept_token(token)
    g.rollback(2)  # undo 5 and the end marker: back inside the reasoning, the grammar at its start
    assert allowed(g) == set(range(VOCAB)) - {EOS}
    assert g.accept_token(END) and allowed(g) == {5}
    unopened = gated(opened=False)
    assert unopened.accept_token(5) and unopened.accept_token(6)
    unopened.rollback(2)
    assert allowed(unopened) == {5, START}


class Tok:
    def __init__(self, table: dict[str, list[int]]) -> None:
        self.table = table

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.table[text]


def test_gate_needs_single_token_markers() -> None:
    gate = reasoning_gate(Tok({"<think>": [START], "</think>": [END]}), "<think>", "</think>", True, {EOS, 2})
    assert gate == ReasoningGate(START, END, True, (EOS, 2))
    with pytest.raises(ValueError, match="'</think>' to be one token"):
        reasoning_gate(Tok({"<think>": [START], "</think>": [7, 8]}), "<think>", "</think>", True, {EOS})
