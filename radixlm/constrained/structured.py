"""The sampler's side of constrained decoding: mask the constrained rows of a batch, then
advance each constrained request's grammar by what it sampled (jump-forward or not, chosen once
at construction)."""

from __future__ import annotations

import functools
import time
from typing import Any, Optional

import numpy as np
import torch

from radixlm.constrained.jump_forward import GrammarStepper, JumpForwardStepper
from radixlm.constrained.vocab_mask import VocabMask


class StructuredOutput:
    """Rows without a grammar are never touched; a batch without any grammar skips the stage.

    `seconds` / `masked_steps` count the host time spent on constraints (filling and applying
    masks, advancing grammars) and the steps that had a constrained row: the mask overhead a
    benchmark reads. Masking never waits for the device: on a GPU the host fills the masks while
    the forward runs, and the copy and the masking kernel are queued behind it (not in `seconds`).
    """

    def __init__(self, mask: VocabMask, stepper: GrammarStepper) -> None:
        self.mask, self.stepper = mask, stepper
        self.seconds, self.masked_steps = 0.0, 0
        # A constrained request's next forward may run before its grammar has accepted its newest
        # token (the sampling waits for the grammar) unless the grammar may append forced tokens,
        # which change that forward's input.
        self.can_lag = not stepper.forces_tokens
        self._masked_copy = masked_copy_host if mask.device.type == "cpu" else _masked_copy_device

    def mask_logits(self, reqs: list[Any], logits: torch.Tensor) -> torch.Tensor:
        """`logits` itself when no request has a grammar, else a masked copy (row i is request
        i; one batched fill, one host-to-device copy and one masking kernel for the batch)."""
        start = time.perf_counter()
        bitmask = self.mask.fill_batch(reqs)
        if bitmask is None:
            return logits
        masked = self._masked_copy(logits, bitmask)
        self.seconds += time.perf_counter() - start
        self.masked_steps += 1
        return masked

    def warm_up(self, model_vocab: int) -> None:
        """Compile the device's masking kernel now rather than on the first constrained request
        (Triton specializes integer arguments equal to 1 or divisible by 16: batches of 1, 2, 16)."""
        device = self.mask.device
        for rows in (1, 2, 16):
            logits = torch.zeros((rows, model_vocab), dtype=torch.float32, device=device)
            bitmask = torch.full((rows, self.mask.words), -1, dtype=torch.int32, device=device)
            _apply_bitmask()(logits, bitmask, vocab_size=model_vocab)

    def advance(self, req: Any, token: int) -> list[int]:
        """Tokens to append for sampled `token`: just it, or it re-split with forced text."""
        if req.grammar is None:
            return [token]
        start = time.perf_counter()
        tokens = self.stepper.advance(req, token)
        self.seconds += time.perf_counter() - start
        return tokens


def build_structured_output(
    tokenizer: Any, model_vocab: int, eos_ids: set[int], jump_forward: bool, device: Optional[torch.device] = None
) -> StructuredOutput:
    """`device`: where the logits are (default CPU)."""
    tokenizer_vocab = len(tokenizer) if tokenizer is not None else model_vocab
    mask = VocabMask(model_vocab, min(tokenizer_vocab, model_vocab), device)
    if jump_forward and tokenizer is not None:
        structured = StructuredOutput(mask, JumpForwardStepper(eos_ids, tokenizer))
    else:
        structured = StructuredOutput(mask, GrammarStepper(eos_ids))
    if mask.device.type == "cuda":
        structured.warm_up(model_vocab)
    return structured


def masked_copy_host(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """`logits` (CPU) with -inf wherever the bit of `bitmask` (CPU int32, bit j of word w = id
    32*w + j) is 0: the bits unpacked by numpy and one select, several times quicker on the CPU
    than xgrammar's kernel (plus a copy) when most of the vocabulary is banned."""
    words = bitmask.numpy().astype("<i4", copy=False)  # little-endian: byte k of a word holds ids 8k..8k+7
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    allowed = torch.from_numpy(bits).view(torch.bool)[:, : logits.shape[-1]]
    return torch.where(allowed, logits, float("-inf"))


def _masked_copy_device(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    masked = logits.clone()
    _apply_bitmask()(masked, bitmask, vocab_size=logits.shape[-1])
    return masked


@functools.cache
def _apply_bitmask() -> Any:
    """xgrammar's batched masking (any backend's masks share its packing), imported on the first
    constrained step: an engine that never sees a grammar does not import xgrammar."""
    from xgrammar import apply_token_bitmask_inplace

    return apply_token_bitmask_inplace
