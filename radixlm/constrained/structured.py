"""The sampler's side of constrained decoding: mask the constrained rows of a batch, then
advance each constrained request's grammar by what it sampled (jump-forward or not, chosen once
at construction)."""

from __future__ import annotations

import time
from typing import Any

import torch

from radixlm.constrained.jump_forward import GrammarStepper, JumpForwardStepper
from radixlm.constrained.vocab_mask import VocabMask
from radixlm.sampling.sampler import apply_vocab_mask


class StructuredOutput:
    """Rows without a grammar are never touched; a batch without any grammar skips the stage.

    `seconds` / `masked_steps` count the host time spent on constraints (filling and applying
    masks, advancing grammars) and the steps that had a constrained row: the mask overhead a
    benchmark reads. On a GPU the device part of applying the mask is asynchronous and not in it.
    """

    def __init__(self, mask: VocabMask, stepper: GrammarStepper) -> None:
        self.mask, self.stepper = mask, stepper
        self.seconds, self.masked_steps = 0.0, 0

    def mask_logits(self, reqs: list[Any], logits: torch.Tensor) -> torch.Tensor:
        """`logits` itself when no request has a grammar, else a masked copy."""
        start = time.perf_counter()
        filled = self.mask.fill(reqs)
        if filled is None:
            return logits
        bitmask, rows = filled
        masked = apply_vocab_mask(logits.clone(), bitmask, rows)
        self.seconds += time.perf_counter() - start
        self.masked_steps += 1
        return masked

    def advance(self, req: Any, token: int) -> list[int]:
        """Tokens to append for sampled `token`: just it, or it re-split with forced text."""
        if req.grammar is None:
            return [token]
        start = time.perf_counter()
        tokens = self.stepper.advance(req, token)
        self.seconds += time.perf_counter() - start
        return tokens


def build_structured_output(
    tokenizer: Any, model_vocab: int, eos_ids: set[int], jump_forward: bool
) -> StructuredOutput:
    tokenizer_vocab = len(tokenizer) if tokenizer is not None else model_vocab
    mask = VocabMask(model_vocab, min(tokenizer_vocab, model_vocab))
    if jump_forward and tokenizer is not None:
        return StructuredOutput(mask, JumpForwardStepper(eos_ids, tokenizer))
    return StructuredOutput(mask, GrammarStepper(eos_ids))
