"""The batch's grammar masks as one packed tensor, filled only for the rows that have a grammar."""

from __future__ import annotations

from typing import Any, Optional

import torch


class VocabMask:
    """Invariant: a filled bitmask has one row per constrained request of the batch, 32 token ids
    per int32 word, and never allows an id at or past the tokenizer's vocabulary (the model's
    vocabulary may be padded past it)."""

    def __init__(self, model_vocab: int, tokenizer_vocab: int) -> None:
        self.words = (model_vocab + 31) // 32
        self.valid: Optional[torch.Tensor] = None
        if tokenizer_vocab < model_vocab:
            allowed = torch.zeros(self.words * 32, dtype=torch.int64)
            allowed[:tokenizer_vocab] = 1
            weights = torch.tensor([1 << j for j in range(32)], dtype=torch.int64)
            packed = (allowed.view(self.words, 32) * weights).sum(-1)
            self.valid = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)

    def fill(self, reqs: list[Any]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(bitmask [R, words], row indices [R]) for the R requests with a grammar, or None."""
        rows = [i for i, req in enumerate(reqs) if req.grammar is not None]
        if not rows:
            return None
        bitmask = torch.zeros((len(rows), self.words), dtype=torch.int32)
        for k, i in enumerate(rows):
            reqs[i].grammar.fill_vocab_mask(bitmask, k)
        if self.valid is not None:
            bitmask &= self.valid
        return bitmask, torch.tensor(rows, dtype=torch.int64)
