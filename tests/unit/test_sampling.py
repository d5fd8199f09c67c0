"""Tests for radixlm.sampling: batched sampling (truncation, distributions, seeds), penalties and
bias (parameter validation: test_sampling_params.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixlm.sampling import (
    SamplingBatch,
    SamplingParams,
    apply_penalties_and_bias,
    derive_step_seed,
    filter_probs,
    sample,
)

VOCAB = 100
CPU = torch.device("cpu")


def make_batch(
    params: list[SamplingParams],
    vocab: int = VOCAB,
    outputs: list[list[int]] | None = None,
    eos: set[int] | list[set[int]] | None = None,
    seeds: list[int | None] | None = None,
) -> SamplingBatch:
    for p in params:
        p.validate(vocab)
    outputs = outputs if outputs is not None else [[] for _ in params]
    seeds = seeds if seeds is not None else [None] * len(params)
    return SamplingBatch.build(params, outputs, vocab, eos if eos is not None else set(), CPU, seeds)


# ---------------------------------------------------------------- sampling


def random_logits(rows: int, vocab: int = VOCAB, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen) * scale


def test_greedy_equals_argmax_and_skips_probability_math() -> None:
    logits = random_logits(16)
    batch = make_batch([SamplingParams(temperature=0.0) for _ in range(16)])
    assert batch.all_greedy and not batch.needs_truncation
    out = sample(logits, batch)
    assert out.dtype == torch.int64 and torch.equal(out, logits.argmax(-1))


def test_top_k_one_equals_greedy_in_mixed_batch() -> None:
    logits = random_logits(8)
    params = [SamplingParams(top_k=1) if i % 2 == 0 else SamplingParams() for i in range(8)]
    batch = make_batch(params)
    for _ in range(20):
        out = sample(logits, batch)
        assert torch.equal(out[::2], logits[::2].argmax(-1))


@pytest.mark.parametrize("kwargs", [{"top_p": 1e-6}, {"min_p": 1.0}, {"top_k": 1, "top_p": 0.5}])
def test_degenerate_truncation_is_argmax(kwargs: dict) -> None:
    logits = random_logits(64, scale=0.5)
    batch = make_batch([SamplingParams(temperature=1.5, **kwargs) for _ in range(64)])
    for _ in range(10):
        assert torch.equal(sample(logits, batch), logits.argmax(-1))


def test_sample_rejects_wrong_shape_and_keeps_logits() -> None:
    batch = make_batch([SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match="shape"):
        sample(torch.zeros(3, VOCAB), batch)
    logits = random_logits(2)
    copy = logits.clone()
    sample(logits, batch)
    assert torch.equal(logits, copy)


def test_empty_batch() -> None:
    batch = make_batch([])
    assert sample(torch.zeros(0, VOCAB), batch).shape == (0,)


BASE_PROBS = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])


def empirical(kwargs: dict, rows: int = 20000) -> torch.Tensor:
    torch.manual_seed(1234)
    logits = BASE_PROBS.log().expand(rows, 5).contiguous()
    batch = make_batch([SamplingParams(**kwargs) for _ in range(rows)], vocab=5)
    out = sample(logits, batch)
    return torch.bincount(out, minlength=5).float() / rows


def renorm(p: torch.Tensor, keep: list[int]) -> torch.Tensor:
    mask = torch.zeros(5, dtype=torch.bool)
    mask[keep] = True
    q = torch.where(mask, p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, BASE_PROBS),
        ({"temperature": 2.0}, BASE_PROBS.sqrt() / BASE_PROBS.sqrt().sum()),
        ({"top_k": 3}, renorm(BASE_PROBS, [1, 2, 4])),
        ({"top_p": 0.5}, renorm(BASE_PROBS, [2, 4])),  # 0.3 + 0.25 >= 0.5
        ({"top_p": 0.56}, renorm(BASE_PROBS, [2, 4, 1])),
        # top-p applies to the renormalized top-k: 0.3 / 0.55 >= 0.5
        ({"top_k": 2, "top_p": 0.5}, renorm(BASE_PROBS, [2])),
        ({"min_p": 0.6}, renorm(BASE_PROBS, [1, 2, 4])),  # p >= 0.18
    ],
)
def test_sampling_distribution(kwargs: dict, expected: torch.Tensor) -> None:
    freq = empirical(kwargs)
    # 20k draws: std <= 0.0036 per entry, so 0.015 is > 4 sigma.
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)
    assert torch.all(freq[expected == 0] == 0)


def reference_keep(probs: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Keep-mask of one row computed the textbook way with a full sort."""
    vals, idx = probs.sort(descending=True)
    vals = vals[:top_k] if top_k > 0 else vals
    vals = vals / vals.sum()
    exclusive = torch.cumsum(vals, 0) - vals
    n_keep = int((exclusive < top_p).sum()) if top_p < 1.0 else vals.numel()
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[idx[:n_keep]] = True
    return keep & (probs >= min_p * probs.max())


def test_filter_probs_matches_sort_reference() -> None:
    vocab, rows = 2000, 24
    gen = torch.Generator().manual_seed(7)
    logits = random_logits(rows, vocab, seed=3, scale=2.0)
    top_ks = torch.randint(1, 400, (rows,), generator=gen).tolist()
    top_ps = (torch.rand(rows, generator=gen) * 0.99 + 0.01).tolist()
    min_ps = (torch.rand(rows, generator=gen) * 0.05).tolist()
    params = []
    for i in range(rows):
        kind = i % 4  # mix of stages per row, including rows with none of them
        params.append(
            SamplingParams(
                temperature=0.7,
                top_k=top_ks[i] if kind in (0, 1) else -1,
                top_p=top_ps[i] if kind in (0, 2) else 1.0,
                min_p=min_ps[i] if kind in (1, 2) else 0.0,
            )
        )
    batch = make_batch(params, vocab=vocab)
    probs = torch.softmax(logits / 0.7, dim=-1)
    kept = filter_probs(probs.clone(), batch) > 0
    for i, p in enumerate(params):
        expected = reference_keep(probs[i], p.top_k, p.top_p, p.min_p)
        assert torch.equal(kept[i], expected), i


def test_seeded_rows_ignore_batch_composition() -> None:
    vocab = 5000
    target = random_logits(1, vocab, seed=11, scale=1.0)
    others = random_logits(4, vocab, seed=12)
    mine = SamplingParams(temperature=0.9, top_p=0.95, top_k=500, seed=5)
    other_params = [
        SamplingParams(temperature=0.0),
        SamplingParams(seed=9),
        SamplingParams(top_p=0.3),
        SamplingParams(min_p=0.2, temperature=1.3),
    ]
    tokens = set()
    for step in range(30):
        seed = derive_step_seed(5, step)
        torch.manual_seed(step)
        alone = sample(target, make_batch([mine], vocab, seeds=[seed]))
        tokens.add(int(alone))
        for pos in range(5):
            torch.manual_seed(1000 + step * 5 + pos)
            logits = torch.cat([others[:pos], target, others[pos:]])
            params = other_params[:pos] + [mine] + other_params[pos:]
            seeds = [derive_step_seed(9, step) if p.seed else None for p in params]
            seeds[pos] = seed
            assert int(sample(logits, make_batch(params, vocab, seeds=seeds))[pos]) == int(alone)
    assert len(tokens) > 5, "different step seeds must give different draws"


# ---------------------------------------------------------------- penalties


PEN_LOGITS = torch.tensor([[2.0, -1.0, 0.5, -3.0, 4.0, 0.0]] * 2)
PEN_OUTPUT = [1, 1, 2, 4]  # token 1 twice, tokens 2 and 4 once


@pytest.mark.parametrize(
    ("kwargs", "expected_row"),
    [
        ({"repetition_penalty": 2.0}, [2.0, -2.0, 0.25, -3.0, 2.0, 0.0]),
        ({"frequency_penalty": 0.5}, [2.0, -2.0, 0.0, -3.0, 3.5, 0.0]),
        ({"presence_penalty": 0.25}, [2.0, -1.25, 0.25, -3.0, 3.75, 0.0]),
        (
            {"repetition_penalty": 2.0, "frequency_penalty": 0.5, "presence_penalty": 0.25},
            [2.0, -3.25, -0.5, -3.0, 1.25, 0.0],
        ),
        ({"logit_bias": {0: 1.5, "3": -2.0}}, [3.5, -1.0, 0.5, -5.0, 4.0, 0.0]),
        ({"repetition_penalty": 2.0, "logit_bias": {1: 0.5}}, [2.0, -1.5, 0.25, -3.0, 2.0, 0.0]),
    ],
)
def test_penalties_and_bias_exact(kwargs: dict, expected_row: list[float]) -> None:
    # Row 1 has the same output but no penalties: it must stay untouched.
    batch = make_batch([SamplingParams(**kwargs), SamplingParams()], vocab=6, outputs=[PEN_OUTPUT, PEN_OUTPUT])
    out = apply_penalties_and_bias(PEN_LOGITS.clone(), batch)
    assert torch.equal(out[0], torch.tensor(expected_row))
    assert torch.equal(out[1], PEN_LOGITS[1])


def test_penalty_stages_skipped_when_unused() -> None:
    batch = make_batch([SamplingParams(), SamplingParams(temperature=0)], vocab=6, outputs=[PEN_OUTPUT, [3]])
    assert not (batch.has_penalties or batch.has_logit_bias or batch.has_min_tokens_ban)
    assert torch.equal(apply_penalties_and_bias(PEN_LOGITS.clone(), batch), PEN_LOGITS)
    empty_output = make_batch([SamplingParams(repetition_penalty=1.3)], vocab=6, outputs=[[]])
    assert not empty_output.has_penalties


def test_greedy_uses_penalized_logits() -> None:
    batch = make_batch([SamplingParams(temperature=0, repetition_penalty=4.0)], vocab=6, outputs=[[4]])
    logits = apply_penalties_and_bias(PEN_LOGITS[:1].clone(), batch)
    assert int(sample(logits, batch)[0]) == 0  # token 4 drops from 4.0 to 1.0


def test_min_new_tokens_bans_eos_and_stop_ids_until_reached() -> None:
    ninf = float("-inf")
    params = [
        SamplingParams(min_new_tokens=3, stop_token_ids=[2]),
        SamplingParams(min_new_tokens=3, stop_token_ids=[2]),
        SamplingParams(min_new_tokens=3, stop_token_ids=[2], ignore_eos=True),
        SamplingParams(min_new_tokens=3),
    ]
    outputs = [[0, 1], [0, 1, 3], [0], []]
    eos = [{5}, {5}, {5}, {4, 5}]
    batch = make_batch(params, vocab=6, outputs=outputs, eos=eos)
    out = apply_penalties_and_bias(torch.zeros(4, 6), batch)
    assert torch.equal(out[0], torch.tensor([0, 0, ninf, 0, 0, ninf]))
    assert torch.equal(out[1], torch.zeros(6))  # already 3 tokens: nothing banned
    assert torch.equal(out[2], torch.tensor([0, 0, ninf, 0, 0, 0]))  # EOS ignored, so not banned
    assert torch.equal(out[3], torch.tensor([0, 0, 0, 0, ninf, ninf]))
    shared = make_batch(params[:1], vocab=6, outputs=outputs[:1], eos={1})
    assert torch.equal(apply_penalties_and_bias(torch.zeros(1, 6), shared)[0], torch.tensor([0, ninf, ninf, 0, 0, 0]))


def test_min_new_tokens_ban_holds_through_sampling() -> None:
    logits = torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0, 9.0]] * 64)
    batch = make_batch([SamplingParams(min_new_tokens=1, stop_token_ids=[2]) for _ in range(64)], vocab=6, eos={5})
    out = sample(apply_penalties_and_bias(logits, batch), batch)
    assert not torch.isin(out, torch.tensor([2, 5])).any()


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    vocab=st.integers(2, 300),
    top_k=st.sampled_from([-1, 2, 3, 17, 250, 10_000]),
    top_p=st.sampled_from([1.0, 0.999, 0.9, 0.5, 0.1, 1e-4]),
    min_p=st.sampled_from([0.0, 0.01, 0.3, 1.0]),
)
def test_filter_probs_properties(data: st.DataObject, vocab: int, top_k: int, top_p: float, min_p: float) -> None:
    # Small integer logits make ties common, the hard case for cut-offs.
    levels = data.draw(st.lists(st.integers(-4, 4), min_size=vocab, max_size=vocab))
    probs = torch.softmax(torch.tensor(levels, dtype=torch.float32), dim=-1).unsqueeze(0)
    batch = make_batch([SamplingParams(top_k=top_k, top_p=top_p, min_p=min_p)], vocab=vocab)
    kept = filter_probs(probs.clone(), batch)[0] > 0
    p = probs[0]
    assert kept[p.argmax()]
    if (~kept).any():  # survivors are exactly the tokens above a threshold
        assert p[kept].min() > p[~kept].max()
    cut = p[kept].min()
    k_eff = vocab if top_k == -1 else min(top_k, vocab)
    assert int((p > cut).sum()) < k_eff  # only ties at the cut exceed k
    assert torch.all(p[kept] >= min_p * p.max())
    top_mass = float(p.sort(descending=True).values[:k_eff].sum())
    if min_p == 0.0:
        # The nucleus reaches top_p of the top-k mass...
        assert float(p[kept].sum()) >= top_p * top_mass - 1e-5
        if top_p < 1.0:
            # ...and is minimal: the tokens strictly above the cut do not.
            assert float(p[p > cut].sum()) < top_p * top_mass + 1e-6


def test_sync_free_cutoffs_equal_the_cpu_ones() -> None:
    """The GPU path (every row fully sorted, no host sync) computes the CPU path's cut-offs."""
    from radixlm.sampling.sampler import _rank_cutoffs, rank_cutoffs_all_rows

    vocab, rows = 500, 16
    gen = torch.Generator().manual_seed(11)
    params = [
        SamplingParams(temperature=0.9, top_k=[-1, 5, 40, 499][i % 4], top_p=[1.0, 0.9, 0.3][i % 3])
        for i in range(rows)
    ]
    batch = make_batch(params, vocab=vocab)
    probs = torch.softmax(torch.randn(rows, vocab, generator=gen) * 2, dim=-1)
    assert torch.equal(rank_cutoffs_all_rows(probs, batch), _rank_cutoffs(probs, batch))
    top_k_only = make_batch([SamplingParams(top_k=k) for k in (3, -1, 7)], vocab=vocab)
    assert torch.equal(rank_cutoffs_all_rows(probs[:3], top_k_only), _rank_cutoffs(probs[:3], top_k_only))
