"""Per-step tensors describing how to sample each row of a decode batch.

Built once per step from the requests' validated SamplingParams. Optional
stages (penalties, logit bias, min_new_tokens ban, top-k/top-p/min-p) are
represented by None / False when no row in the batch uses them, so the sampler
can skip the whole stage instead of doing no-op math over [B, V].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from radixlm.forward.device_copy import pinned_to_device as _pinned
from radixlm.forward.device_copy import to_device
from radixlm.sampling.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


@dataclass
class SamplingBatch:
    """Sampling state for B rows over a vocabulary of V tokens.

    Invariants (B = batch size, V = vocab_size):
      temperatures: [B, 1] float32, > 0; greedy rows hold 1.0 (unused).
      top_ks: [B] int64 in [1, V]; V means "off" (also for greedy rows).
      top_ps: [B] float32 in (0, 1]; 1.0 means "off".
      min_ps: [B] float32 in [0, 1]; 0.0 means "off".
      greedy_mask: [B] bool; greedy rows take argmax of the penalized logits.
      all_greedy / need_top_k / need_top_p / need_min_p: whether any
        (resp. every) row needs the stage; False means the stage is skipped.
      penalty_index: (rows, token ids), int64 [P] each: the distinct tokens
        generated so far by rows that use any penalty; None when P == 0.
      penalty_counts: [P] float32 occurrences of each pair (>= 1), or None.
      repetition_penalties: [P] float32 penalty of each pair's row, or None
        when no such row has a penalty != 1.
      frequency_penalties, presence_penalties: [P] float32 each, or both
        None when no such row uses either.
      bias_index / bias_values: sparse (rows, cols) and values of logit_bias,
        or None.
      ban_index: sparse (rows, cols) of tokens forced to -inf because the row
        has not reached min_new_tokens, or None.
      generators: per row, a torch.Generator seeded with that row's step
        seed, or None to use the default generator.
    """

    vocab_size: int
    temperatures: torch.Tensor
    top_ks: torch.Tensor
    top_ps: torch.Tensor
    min_ps: torch.Tensor
    greedy_mask: torch.Tensor
    all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    penalty_index: tuple[torch.Tensor, torch.Tensor] | None
    penalty_counts: torch.Tensor | None
    repetition_penalties: torch.Tensor | None
    frequency_penalties: torch.Tensor | None
    presence_penalties: torch.Tensor | None
    bias_index: tuple[torch.Tensor, torch.Tensor] | None
    bias_values: torch.Tensor | None
    ban_index: tuple[torch.Tensor, torch.Tensor] | None
    generators: list[torch.Generator | None]

    @property
    def batch_size(self) -> int:
        return len(self.generators)

    @property
    def has_penalties(self) -> bool:
        return self.penalty_index is not None

    @property
    def has_logit_bias(self) -> bool:
        return self.bias_index is not None

    @property
    def has_min_tokens_ban(self) -> bool:
        return self.ban_index is not None

    @property
    def needs_truncation(self) -> bool:
        return self.need_top_k or self.need_top_p or self.need_min_p

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        output_ids: list[list[int]],
        vocab_size: int,
        eos_ids: list[set[int]] | set[int],
        device: torch.device,
        step_seeds: list[int | None],
    ) -> SamplingBatch:
        """Build the batch for one step.

        params must have passed `validate(vocab_size)`. output_ids[i] are the
        tokens request i generated so far (not the prompt). eos_ids is one set
        shared by all rows or one set per row. step_seeds[i] seeds row i for
        this step only (see `derive_step_seed`); None = default generator.
        """
        n = len(params)
        if isinstance(eos_ids, (set, frozenset)):
            eos_ids = [eos_ids] * n
        if not len(output_ids) == len(eos_ids) == len(step_seeds) == n:
            raise ValueError(
                "params, output_ids, eos_ids and step_seeds must have the same length "
                f"(got {n}, {len(output_ids)}, {len(eos_ids)}, {len(step_seeds)})"
            )
        device = torch.device(device)
        return cls(
            vocab_size=vocab_size,
            **_truncation_fields(params, vocab_size, device),
            **_penalty_fields(params, output_ids, vocab_size, device),
            **_sparse_fields(params, output_ids, eos_ids, vocab_size, device),
            generators=[_generator(s, device) for s in step_seeds],
        )


def _truncation_fields(params: list[SamplingParams], vocab: int, device: torch.device) -> dict:
    greedy = [p.is_greedy for p in params]
    # Greedy rows get neutral values so they never switch a stage on.
    temps = [1.0 if g else p.temperature for p, g in zip(params, greedy)]
    top_ks = [vocab if g or p.top_k == -1 else min(p.top_k, vocab) for p, g in zip(params, greedy)]
    top_ps = [1.0 if g else p.top_p for p, g in zip(params, greedy)]
    min_ps = [0.0 if g else p.min_p for p, g in zip(params, greedy)]
    return dict(
        temperatures=to_device(temps, device, torch.float32).view(-1, 1),
        top_ks=to_device(top_ks, device),
        top_ps=to_device(top_ps, device, torch.float32),
        min_ps=to_device(min_ps, device, torch.float32),
        greedy_mask=to_device(greedy, device, torch.bool),
        all_greedy=all(greedy),
        need_top_k=any(k < vocab for k in top_ks),
        need_top_p=any(p < 1.0 for p in top_ps),
        need_min_p=any(m > 0.0 for m in min_ps),
    )


def _penalty_fields(
    params: list[SamplingParams], output_ids: list[list[int]], vocab: int, device: torch.device
) -> dict:
    rep = [p.repetition_penalty for p in params]
    freq = [p.frequency_penalty for p in params]
    pres = [p.presence_penalty for p in params]
    rows = [i for i in range(len(params)) if rep[i] != 1.0 or freq[i] != 0.0 or pres[i] != 0.0]
    pair_rows, pair_cols, counts = _distinct_tokens(output_ids, rows, vocab)
    if pair_rows.numel() == 0:
        return dict(
            penalty_index=None,
            penalty_counts=None,
            repetition_penalties=None,
            frequency_penalties=None,
            presence_penalties=None,
        )
    use_fp = any(freq[i] != 0.0 or pres[i] != 0.0 for i in rows)
    per_pair = functools.partial(_gather_rows, rows=pair_rows, device=device)
    return dict(
        penalty_index=(_pinned(pair_rows, device), _pinned(pair_cols, device)),
        penalty_counts=_pinned(counts, device),
        repetition_penalties=per_pair(rep) if any(rep[i] != 1.0 for i in rows) else None,
        frequency_penalties=per_pair(freq) if use_fp else None,
        presence_penalties=per_pair(pres) if use_fp else None,
    )


def _gather_rows(values: list[float], rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """values[rows] as a float32 tensor on device (one entry per penalty pair)."""
    return _pinned(torch.tensor(values, dtype=torch.float32)[rows], device)


def _distinct_tokens(
    output_ids: list[list[int]], rows: list[int], vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct (row, token) pairs among rows' outputs with their counts, on CPU.

    Sparse on purpose: B * len(output) pairs is far smaller than B * V, so the
    penalties touch only logits that actually change.
    """
    empty = torch.zeros(0, dtype=torch.int64)
    lengths = [len(output_ids[i]) for i in rows]
    if sum(lengths) == 0:
        return empty, empty, empty.float()
    tokens = torch.cat([torch.as_tensor(output_ids[i], dtype=torch.int64) for i in rows])
    row_ids = torch.repeat_interleave(torch.tensor(rows, dtype=torch.int64), torch.tensor(lengths))
    flat, counts = torch.unique(row_ids * vocab + tokens, return_counts=True)
    return flat // vocab, flat % vocab, counts.float()


def _sparse_fields(
    params: list[SamplingParams],
    output_ids: list[list[int]],
    eos_ids: list[set[int]],
    vocab: int,
    device: torch.device,
) -> dict:
    bias_rows, bias_cols, bias_vals = [], [], []
    ban_rows, ban_cols = [], []
    for i, p in enumerate(params):
        for token, value in (p.logit_bias or {}).items():
            bias_rows.append(i)
            bias_cols.append(int(token))
            bias_vals.append(float(value))
        if len(output_ids[i]) < p.min_new_tokens:
            banned = _terminating_ids(p, eos_ids[i], vocab)
            ban_rows.extend([i] * len(banned))
            ban_cols.extend(banned)
    return dict(
        bias_index=_index_pair(bias_rows, bias_cols, device) if bias_rows else None,
        bias_values=to_device(bias_vals, device, torch.float32) if bias_rows else None,
        ban_index=_index_pair(ban_rows, ban_cols, device) if ban_rows else None,
    )


def _index_pair(rows: list[int], cols: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        to_device(rows, device),
        to_device(cols, device),
    )


def _terminating_ids(p: SamplingParams, eos: set[int], vocab: int) -> list[int]:
    """Token ids that would end request p; EOS only counts when not ignored."""
    ids = set(p.stop_token_ids or ())
    if not p.ignore_eos:
        ids |= set(eos)
    return sorted(t for t in ids if 0 <= t < vocab)


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    # manual_seed rejects values outside the 64-bit range; fold any int in.
    return torch.Generator(device=device).manual_seed(seed & _MASK64)
