"""Tests for radixlm.sampling's `SamplingParams`: SGLang's defaults, validation that names every bad
field and leaves the parameters unchanged, normalization, and the per-step seed (the batched
sampler: test_sampling.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from radixlm.sampling import SamplingParams, derive_step_seed

VOCAB = 100


def test_defaults_match_sglang() -> None:
    p = SamplingParams()
    assert (p.max_new_tokens, p.min_new_tokens, p.temperature, p.top_p, p.top_k) == (128, 0, 1.0, 1.0, -1)
    assert (p.min_p, p.repetition_penalty, p.frequency_penalty, p.presence_penalty) == (0.0, 1.0, 0.0, 0.0)
    assert p.stop is None and p.stop_token_ids is None and p.logit_bias is None and p.seed is None
    assert (p.ignore_eos, p.skip_special_tokens, p.spaces_between_special_tokens) == (False, True, True)
    assert p.n == 1 and not p.no_stop_trim and p.regex is None and p.json_schema is None and p.ebnf is None
    p.validate(VOCAB)


_BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
_BAD = {
    "temperature": (-0.1, math.nan, math.inf, -math.inf, "1", True, None),
    "top_p": (0, 0.0, -0.5, 1.0001, math.nan, math.inf, True, "0.5"),
    "top_k": (0, -2, 1.5, True, "5", None),
    "min_p": (-0.1, 1.1, math.nan, False),
    "repetition_penalty": (0, 0.0, -1.0, math.nan, math.inf, True),
    "frequency_penalty": (2.01, -2.01, math.nan, math.inf, -math.inf, True, "0"),
    "presence_penalty": (2.01, -2.01, math.nan, math.inf, -math.inf, True, "0"),
    "max_new_tokens": (-1, 1.0, True, None, "8"),
    "min_new_tokens": (-1, 129, 1.5, True),
    "n": (0, -1, 1.5, True),
    "stop_token_ids": ([-1], [VOCAB], [True], ["3"], [1.0], "5", 5),
    "logit_bias": (
        {VOCAB: 1.0},
        {-1: 1.0},
        {"x": 1.0},
        {"-1": 1.0},
        {True: 1.0},
        {1.5: 1.0},
        {1: math.nan},
        {1: math.inf},
        {1: "a"},
        {1: True},
        [1.0],
    ),
    "stop": (5, [5], [""], "", ["ok", None]),
    "seed": (1.5, True, "1"),
    **{name: (1, 0, "yes", None) for name in _BOOL_FIELDS},
    **{name: (5,) for name in ("regex", "json_schema", "ebnf")},
}
BAD_VALUES = [(field, value) for field, values in _BAD.items() for value in values]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_validation_error_names_field(field: str, value: object) -> None:
    params = SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=rf"\b{field}: must be") as info:
        params.validate(VOCAB)
    assert str(info.value).count(": must be") == 1, "only the bad field is reported"


def test_failed_validation_leaves_params_unchanged() -> None:
    params = SamplingParams(stop="x", logit_bias={"3": 1}, temperature=-1)
    before = dataclasses.asdict(params)
    with pytest.raises(ValueError):
        params.validate(VOCAB)
    assert dataclasses.asdict(params) == before


def test_validation_reports_every_bad_field() -> None:
    params = SamplingParams(temperature=-1, top_p=2, top_k=0, n=0)
    with pytest.raises(ValueError) as info:
        params.validate(VOCAB)
    for field in ("temperature", "top_p", "top_k", "n"):
        assert f"{field}: must be" in str(info.value)


def test_validation_rejects_two_constraints_and_bad_vocab() -> None:
    with pytest.raises(ValueError, match="regex, ebnf: at most one"):
        SamplingParams(regex="a+", ebnf="root ::= 'a'").validate(VOCAB)
    for vocab in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="vocab_size"):
            SamplingParams().validate(vocab)  # type: ignore[arg-type]


def test_deeply_nested_constraints_are_a_value_error_not_a_recursion_error() -> None:
    """A 5,000-deep JSON schema (object or text), regex or EBNF grammar is refused by name before
    anything parses or serializes it recursively; a moderately nested schema passes."""
    deep: object = {"type": "string"}
    for _ in range(5000):
        deep = {"type": "array", "items": deep}
    deep_text = '{"type": "array", "items": ' * 5000 + '{"type": "string"}' + "}" * 5000
    cases = {
        "json_schema": [deep, deep_text],
        "regex": ["(" * 5000 + "a" + ")" * 5000],
        "ebnf": ["root ::= " + "(" * 5000 + '"a"' + ")" * 5000],
    }
    for name, values in cases.items():
        for value in values:
            with pytest.raises(ValueError, match=f"{name}: .*nested"):
                SamplingParams(**{name: value}).validate(VOCAB)
    fine: object = {"type": "string"}
    for _ in range(40):
        fine = {"type": "array", "items": fine}
    params = SamplingParams(json_schema=fine)
    params.validate(VOCAB)
    assert params.json_schema.count("items") == 40


def test_validation_accepts_boundaries_and_normalizes() -> None:
    p = SamplingParams(
        temperature=0,
        top_p=1,
        top_k=10 * VOCAB,
        min_p=1,
        repetition_penalty=3,
        frequency_penalty=-2,
        presence_penalty=2,
        max_new_tokens=0,
        min_new_tokens=0,
        stop="###",
        stop_token_ids=(0, VOCAB - 1),
        logit_bias={"7": 1, 8: -2.5},
        seed=-3,
        regex="a+",
    )
    p.validate(VOCAB)
    assert p.stop == ["###"] and p.stop_token_ids == [0, VOCAB - 1]
    assert p.logit_bias == {7: 1.0, 8: -2.5} and all(type(k) is int for k in p.logit_bias)
    assert type(p.temperature) is float and type(p.top_p) is float and type(p.min_p) is float
    SamplingParams(min_new_tokens=5, max_new_tokens=5, stop=["a", "b"]).validate(VOCAB)


def test_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=1e-7).is_greedy
    assert SamplingParams(top_k=1).is_greedy
    assert not SamplingParams(temperature=1e-5).is_greedy
    assert not SamplingParams().is_greedy


def test_from_dict() -> None:
    p = SamplingParams.from_dict({"temperature": 0.5, "stop": "x", "max_new_tokens": 3})
    assert (p.temperature, p.stop, p.max_new_tokens) == (0.5, "x", 3)
    with pytest.raises(ValueError, match="'best_of'"):
        SamplingParams.from_dict({"temperature": 0.5, "best_of": 2})
    with pytest.raises(ValueError, match="dict"):
        SamplingParams.from_dict([("temperature", 0.5)])  # type: ignore[arg-type]


def test_derive_step_seed_is_stable_and_spread() -> None:
    assert derive_step_seed(42, 3) == derive_step_seed(42, 3)
    seeds = {derive_step_seed(s, t) for s in range(20) for t in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**64 for s in seeds)
    assert derive_step_seed(-1, 0) == derive_step_seed(2**64 - 1, 0)
