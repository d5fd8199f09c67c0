"""Draft tokens of a constrained request: pruned by its grammar, and the per-row masks of the
verify step (each row masked by the grammar state after the drafts before it).

A draft is kept only where the plain decoder would have sampled it under the same mask: the
grammar accepts it, the output is not complete before it, and the state after it forces no text
(jump-forward would append that text instead of sampling the next token). The grammar's state
is the same on return as on entry."""

from __future__ import annotations

from typing import Any, Optional

import torch

from radixlm.constrained.vocab_mask import VocabMask


def prune_drafts(grammar: Any, chain: list[int]) -> list[int]:
    """The longest prefix of `chain` the constrained decoder could have sampled token by token."""
    kept: list[int] = []
    for token in chain:
        if grammar.is_terminated() or not grammar.accept_token(token):
            break
        kept.append(token)
        if grammar.is_terminated() or grammar.try_jump_forward():
            break
    if kept:
        grammar.rollback(len(kept))
    return kept


def verify_masks(
    reqs: list[Any], drafts: list[list[int]], mask: VocabMask
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(bitmask [R, words], logits rows [R]) for every verify row of a request with a grammar
    (row j of request i: its state after `drafts[i][:j]`, which its grammar accepts), or None."""
    rows: list[int] = []
    parts: list[torch.Tensor] = []
    row = 0
    for req, chain in zip(reqs, drafts):
        if req.grammar is not None:
            parts.append(_chain_masks(req.grammar, chain, mask.words))
            rows += range(row, row + len(chain) + 1)
        row += len(chain) + 1
    if not parts:
        return None
    bitmask = torch.cat(parts)
    if mask.valid is not None:
        bitmask &= mask.valid
    return bitmask, torch.tensor(rows, dtype=torch.int64)


def _chain_masks(grammar: Any, chain: list[int], words: int) -> torch.Tensor:
    masks = torch.zeros((len(chain) + 1, words), dtype=torch.int32)
    grammar.fill_vocab_mask(masks, 0)
    for j, token in enumerate(chain):
        if not grammar.accept_token(token):
            if j:
                grammar.rollback(j)
            raise RuntimeError(f"grammar refused draft token {token} it accepted when the drafts were pruned")
        if grammar.is_terminated():  # the request ends at this draft: the next row is never read
            masks[j + 1] = masks[j]
        else:
            grammar.fill_vocab_mask(masks, j + 1)
    if chain:
        grammar.rollback(len(chain))
    return masks
