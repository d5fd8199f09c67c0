"""The sampler's side of constrained decoding: mask the constrained rows of a batch, then
advance each constrained request's grammar by what it sampled (jump-forward or not, chosen once
at construction)."""

from __future__ import annotations

from typing import Any

import torch

from radixlm.constrained.jump_forward import GrammarStepper, JumpForwardStepper
from radixlm.constrained.vocab_mask import VocabMask
from radixlm.sampling.sampler import apply_vocab_mask


class StructuredOutput:
    """Rows without a grammar are never touched; a batch without any grammar skips the stage."""

    def __init__(self, mask: VocabMask, stepper: GrammarStepper) -> None:
        self.mask, self.stepper = mask, stepper

    def mask_logits(self, reqs: list[Any], logits: torch.Tensor) -> torch.Tensor:
        """`logits` itself when no request has a grammar, else a masked copy."""
        filled = self.mask.fill(reqs)
        if filled is None:
            return logits
        bitmask, rows = filled
        return apply_vocab_mask(logits.clone(), bitmask, rows)

    def advance(self, req: Any, token: int) -> list[int]:
        """Tokens to append for sampled `token`: just it, or it re-split with forced text."""
        if req.grammar is None:
            return [token]
        return self.stepper.advance(req, token)


def build_structured_output(tokenizer: Any, model_vocab: int, eos_ids: set[int],
                            jump_forward: bool) -> StructuredOutput:
    tokenizer_vocab = len(tokenizer) if tokenizer is not None else model_vocab
    mask = VocabMask(model_vocab, min(tokenizer_vocab, model_vocab))
    if jump_forward and tokenizer is not None:
        return StructuredOutput(mask, JumpForwardStepper(eos_ids, tokenizer))
    return StructuredOutput(mask, GrammarStepper(eos_ids))
