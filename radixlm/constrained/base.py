"""The grammar contract every constrained-decoding backend implements.

A `GrammarBackend` turns a `GrammarSpec` into a compiled grammar (expensive, cached by spec,
done off the scheduler loop) and hands each request its own `Grammar`: a matcher whose state
follows the request's output tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from radixlm.constrained.spec import GrammarSpec


class UnsupportedSpec(ValueError):
    """The backend would not enforce some part of the spec (named in the message); another
    backend may. Plain ValueErrors mean the spec itself is invalid."""


class Grammar(ABC):
    """One request's matcher. Invariant: its state is the result of accepting exactly the
    request's output tokens so far (in order), so the mask it fills admits exactly the tokens
    that keep the output a prefix of some string of the language."""

    @abstractmethod
    def accept_token(self, token: int) -> bool:
        """Advance by one token; False (state unchanged) when the grammar does not allow it."""

    @abstractmethod
    def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into bitmask[row] (int32 words, bit j of word w = token
        32*w + j; CPU, contiguous), overwriting the whole row. Does not change the state."""

    @classmethod
    def fill_vocab_masks(cls, grammars: list["Grammar"], bitmask: torch.Tensor, rows: list[int]) -> None:
        """`grammars[k].fill_vocab_mask(bitmask, rows[k])` for every k (all of them instances of
        `cls`); a backend may fill them in parallel."""
        for grammar, row in zip(grammars, rows):
            grammar.fill_vocab_mask(bitmask, row)

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once the output is complete: the stop token was accepted or (llguidance) nothing
        but it can follow."""

    @abstractmethod
    def try_jump_forward(self) -> str:
        """The text every continuation must start with ("" when the next step is a choice).
        Does not change the state."""

    @abstractmethod
    def copy(self) -> "Grammar":
        """An independent matcher in the same state."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens."""


class GrammarBackend(ABC):
    """Compiles specs for one tokenizer. `check` is cheap and needs no tokenizer (the front
    calls it to answer a bad spec with a 400); `compile` may take long and is thread-safe."""

    name: str

    @abstractmethod
    def check(self, spec: GrammarSpec) -> None:
        """Raise ValueError naming what is wrong with the spec (UnsupportedSpec when the
        backend would not enforce part of it)."""

    @abstractmethod
    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar for `spec` (which passed `check`); ValueError on failure."""

    @abstractmethod
    def new_grammar(self, compiled: Any) -> Grammar:
        """A fresh matcher at the start of the compiled grammar."""
