"""Batched, vectorized token sampling.

Per step the caller does:
    batch = SamplingBatch.build(...)
    logits = apply_penalties_and_bias(logits, batch)   # in place
    next_ids = sample(logits, batch)

Design notes (CPU decode with B <= 64, V ~ 49k is the hot case):
  * top-k/top-p only need per-row probability thresholds, so rows are sorted
    by value only (NumPy on CPU: torch.sort of [64, 49k] costs ~100+ ms there)
    and no index permutation is ever built or applied.
  * Penalties touch only the (row, token) pairs already generated.
  * Drawing is inverse-CDF with ONE uniform per row (cumsum + searchsorted);
    generating [B, V] exponential/Gumbel noise costs ~50 ms on CPU. A seeded
    row's uniform comes from its own generator, so its token depends only on
    its own logits row and seed, never on batch composition or position.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from radixlm.sampling.sampling_batch import SamplingBatch

__all__ = ["SamplingBatch", "apply_penalties_and_bias", "apply_vocab_mask", "filter_probs", "sample"]

# Above this many values per row a full value sort beats torch.topk on CPU
# (measured: topk(50) ~4 ms, topk(256) ~10 ms, NumPy sort ~9 ms for [64, 49k]).
_TOPK_MAX_N = 128


def apply_penalties_and_bias(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Apply penalties, logit_bias and the min_new_tokens ban to logits [B, V] in place.

    Order: repetition penalty (for tokens already generated: positive logits
    divided by the penalty, negative ones multiplied), frequency penalty
    (minus freq * count), presence penalty (minus presence if count > 0),
    logit_bias (added), then banned ids set to -inf (last, so nothing can lift
    them). Stages no row uses are skipped. Returns `logits`.
    """
    _check_shape(logits, batch)
    if batch.penalty_index is not None:
        _apply_penalties(logits, batch)
    if batch.bias_index is not None:
        logits.index_put_(batch.bias_index, batch.bias_values.to(logits.dtype), accumulate=True)
    if batch.ban_index is not None:
        logits.index_put_(batch.ban_index, torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))
    return logits


def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> None:
    # Only the (row, token) pairs already generated change, so gather them,
    # update the few values and scatter back instead of touching [B, V].
    index = batch.penalty_index
    values = logits[index].float()
    if batch.repetition_penalties is not None:
        penalty = batch.repetition_penalties
        values = torch.where(values > 0, values / penalty, values * penalty)
    if batch.frequency_penalties is not None:
        values = values - batch.frequency_penalties * batch.penalty_counts - batch.presence_penalties
    logits[index] = values.to(logits.dtype)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Pick one token per row from (already penalized) logits [B, V]; returns int64 [B].

    Greedy rows: argmax. Other rows: softmax(logits / temperature), then
    top-k, top-p and min-p truncation (`filter_probs`), then a draw from the
    renormalized remainder. Does not modify `logits`. When every row is
    greedy, no probabilities are computed at all.
    """
    _check_shape(logits, batch)
    greedy_ids = logits.argmax(dim=-1)
    if batch.all_greedy:
        return greedy_ids
    probs = torch.softmax(logits.float() / batch.temperatures, dim=-1)
    if batch.needs_truncation:
        probs = filter_probs(probs, batch)
    sampled = _inverse_cdf_draw(probs, _draw_uniforms(batch, logits.device), greedy_ids)
    return torch.where(batch.greedy_mask, greedy_ids, sampled)


def filter_probs(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Zero (in place) the probabilities removed by top-k, top-p and min-p; returns probs.

    Semantics per row, on the temperature-scaled distribution p:
      top-k: keep the k most likely tokens.
      top-p: on the top-k survivors renormalized, keep the smallest
        most-likely-first set whose mass reaches top_p.
      min-p: keep tokens with p >= min_p * max(p).
    All three reduce to a probability cut-off; a token survives iff
    p >= max(cut-offs). Tokens tied with the cut-off value all survive, and
    the most likely token always survives. The result is not renormalized:
    the draw in `sample` is scale-invariant.
    """
    cut = probs.new_zeros(probs.shape[0])
    if batch.need_top_k or batch.need_top_p:
        cut = _rank_cutoffs(probs, batch)
    if batch.need_min_p:
        cut = torch.maximum(cut, batch.min_ps * probs.amax(dim=-1))
    return probs.masked_fill_(probs < cut.unsqueeze(-1), 0.0)


def _rank_cutoffs(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Per-row probability cut-off implementing top-k and top-p (0 = keep all).

    CPU: only the rows that use top-k/top-p, and only as many sorted values as needed. GPU:
    every row fully sorted (fast there), so the host never waits for the device to learn
    which rows or how many values (`nonzero` and `max().item()` would synchronize)."""
    if probs.device.type != "cpu":
        return rank_cutoffs_all_rows(probs, batch)
    vocab = probs.shape[-1]
    rows = ((batch.top_ks < vocab) | (batch.top_ps < 1.0)).nonzero().squeeze(-1)
    top_ks, top_ps = batch.top_ks[rows], batch.top_ps[rows]
    # top-p needs every value; top-k alone only the k largest.
    length = vocab if batch.need_top_p else int(top_ks.max())
    # Rows without top-k/top-p are left out; when none are, skip the copy.
    subset = probs if rows.numel() == probs.shape[0] else probs.index_select(0, rows)
    return _cutoffs(_largest_sorted(subset, length), rows, top_ks, top_ps, batch, vocab, length)


def rank_cutoffs_all_rows(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """`_rank_cutoffs` without a host synchronization: every row, fully sorted."""
    vocab = probs.shape[-1]
    rows = torch.arange(probs.shape[0], device=probs.device)
    vals = torch.sort(probs, dim=-1, descending=True).values
    return _cutoffs(vals, rows, batch.top_ks, batch.top_ps, batch, vocab, vocab)


def _cutoffs(
    vals: torch.Tensor,
    rows: torch.Tensor,
    top_ks: torch.Tensor,
    top_ps: torch.Tensor,
    batch: SamplingBatch,
    vocab: int,
    length: int,
) -> torch.Tensor:
    """Cut-offs of `rows` from their descending values `vals` [len(rows), length], as a [B] tensor."""
    k_on, p_on = top_ks < vocab, top_ps < 1.0
    last_k = (top_ks.clamp(max=length) - 1).unsqueeze(-1)
    cut = vals.new_zeros(rows.numel())
    if batch.need_top_k:
        cut = torch.where(k_on, vals.gather(-1, last_k).squeeze(-1), cut)
    if batch.need_top_p:
        cum = vals.cumsum(dim=-1)
        mass = torch.where(k_on, cum.gather(-1, last_k).squeeze(-1), cum[:, -1])
        target = (top_ps * mass).unsqueeze(-1)
        # Token j is in the nucleus iff the mass strictly before it is below
        # the target. Exclusive sums never decrease, so the nucleus is a
        # prefix of the sorted order (length >= 1), and it never reaches past
        # the top-k since from there the exclusive sum is >= mass >= target.
        kept = (F.pad(cum[:, :-1], (1, 0)) < target).sum(dim=-1).clamp(min=1)
        cut_p = vals.gather(-1, (kept - 1).unsqueeze(-1)).squeeze(-1)
        cut = torch.where(p_on, torch.maximum(cut, cut_p), cut)
    return vals.new_zeros(batch.batch_size).index_copy_(0, rows, cut)


def _largest_sorted(x: torch.Tensor, n: int) -> torch.Tensor:
    """The n largest values of each row of x, descending (a new tensor)."""
    if n <= _TOPK_MAX_N:
        return x.topk(n, dim=-1).values
    if x.device.type == "cpu":
        # NumPy's SIMD sort is ~25x faster than torch.sort on CPU, and only
        # the values are needed (cut-offs are thresholds, not indices).
        ascending = torch.from_numpy(np.sort(x.contiguous().numpy(), axis=-1))
        return ascending[:, x.shape[-1] - n :].flip(-1)
    return torch.sort(x, dim=-1, descending=True).values[:, :n]


def _draw_uniforms(batch: SamplingBatch, device: torch.device) -> torch.Tensor:
    """One U[0, 1) per row; seeded rows use only their own generator."""
    uniforms = torch.rand(batch.batch_size, device=device)
    for row, gen in enumerate(batch.generators):
        if gen is not None:
            uniforms[row] = torch.rand((), generator=gen, device=device)
    return uniforms


def _inverse_cdf_draw(probs: torch.Tensor, uniforms: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Token whose CDF interval contains u * total mass, per row.

    float32 u < 1 makes u * total < total, so the first cdf entry > u * total
    exists and its token has nonzero probability. `fallback` (the argmax,
    which always survives filtering) covers degenerate rows such as NaN logits.
    """
    cdf = probs.cumsum(dim=-1)
    point = (uniforms * cdf[:, -1]).unsqueeze(-1)
    ids = torch.searchsorted(cdf, point, right=True).squeeze(-1)
    ids = ids.clamp_(max=probs.shape[-1] - 1)
    picked = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return torch.where(picked > 0, ids, fallback)


def _check_shape(logits: torch.Tensor, batch: SamplingBatch) -> None:
    if logits.dim() != 2 or logits.shape != (batch.batch_size, batch.vocab_size):
        raise ValueError(f"logits must have shape ({batch.batch_size}, {batch.vocab_size}), got {tuple(logits.shape)}")


def apply_vocab_mask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Set logits[rows[k], j] to -inf wherever bit j of bitmask[k] is 0, in place; returns logits.

    bitmask: int32 [R, ceil(V/32)] (token 32*w + b is bit b of word w), on any device; rows: [R]
    indices into logits [B, V]. One batched op for all constrained rows; other rows are untouched.
    Unpacked through a 256-entry byte table (words are little-endian), ~7x faster on CPU than
    shifting every word 32 times.
    """
    table = _BYTE_BANS.to(logits.device)
    packed = bitmask.to(logits.device).view(torch.uint8).to(torch.int32)
    banned = table[packed].view(bitmask.shape[0], -1)[:, : logits.shape[-1]]
    rows = rows.to(logits.device)
    return logits.index_copy_(0, rows, logits.index_select(0, rows).masked_fill_(banned, float("-inf")))


# _BYTE_BANS[b, k]: bit k of byte b is 0 (read-only).
_BYTE_BANS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1) == 0
