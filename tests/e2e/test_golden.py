"""Golden tests: radixlm's greedy tokens and logprobs equal HF transformers' (float32, CPU).

Every configuration that must not change results (prefix cache hits, chunked prefill,
retraction under a tiny pool, pages of 4, cache disabled) is checked against the same
HF reference. A leak check runs after every engine use.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, ContextManager

import pytest
import torch
from helpers.golden import (
    GREEDY,
    NEW_TOKENS,
    assert_greedy_equal,
    check_batch_single_and_logprobs,
    random_prompts,
)
from helpers.tiny_models import TINY_ARCHS, hf_greedy, load_hf_model

import radixlm


def run_engine(path: str, prompts: list[list[int]], params: dict = GREEDY, **kwargs) -> list[dict]:
    """Generate for all prompts in one batch, check the pool afterwards, shut down."""
    with radixlm.Engine(
        path, log_level="warning", **{"max_total_tokens": 4096, "dtype": "float32", **kwargs}
    ) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        engine.check_no_leak()
    return outs


def engine_for(arch: str, tiny_model: Callable[[str], str], llama_engine: radixlm.Engine) -> ContextManager:
    """The shared engine, its cache flushed, for the Llama; a private one for another architecture."""
    if arch == "llama":
        assert llama_engine.flush_cache()
        return contextlib.nullcontext(llama_engine)
    return radixlm.Engine(tiny_model(arch), max_total_tokens=4096, dtype="float32", log_level="warning")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_greedy_tokens_and_logprobs_match_hf(
    tiny_model: Callable[[str], str], llama_engine: radixlm.Engine, arch: str
) -> None:
    hf = load_hf_model(tiny_model(arch))
    prompts = random_prompts(8, 3, 48, seed=1)
    with engine_for(arch, tiny_model, llama_engine) as engine:
        check_batch_single_and_logprobs(hf, engine, prompts)


def test_radix_cache_hit_gives_same_tokens(tiny_llama_dir: str, llama_engine: radixlm.Engine) -> None:
    hf = load_hf_model(tiny_llama_dir)
    rng = random.Random(7)
    shared = [rng.randrange(3, 400) for _ in range(40)]
    first, second = shared + [5, 6, 7], shared + [9, 10]
    engine = llama_engine
    assert engine.flush_cache()  # the first request must miss
    out1 = engine.generate(input_ids=first, sampling_params=GREEDY)
    out2 = engine.generate(input_ids=second, sampling_params=GREEDY)
    again = engine.generate(input_ids=first, sampling_params=GREEDY)
    engine.check_no_leak()
    assert out1["meta_info"]["cached_tokens"] == 0
    assert out2["meta_info"]["cached_tokens"] >= 40
    assert again["meta_info"]["cached_tokens"] == len(first) - 1
    assert_greedy_equal(hf, first, out1["output_ids"], hf_greedy(hf, first, NEW_TOKENS))
    assert_greedy_equal(hf, first, again["output_ids"], out1["output_ids"])
    assert_greedy_equal(hf, second, out2["output_ids"], hf_greedy(hf, second, NEW_TOKENS))


def test_prefix_shared_within_one_batch_is_computed_once(tiny_llama_dir: str, llama_engine: radixlm.Engine) -> None:
    """Eight prompts arriving together share a 48-token prefix the cache has never seen: one is
    prefilled first, the others wait a step and reuse its KV, and the tokens stay HF's."""
    hf = load_hf_model(tiny_llama_dir)
    rng = random.Random(11)
    shared = [rng.randrange(3, 400) for _ in range(48)]
    prompts = [shared + [rng.randrange(3, 400) for _ in range(rng.randrange(2, 9))] for _ in range(8)]
    assert llama_engine.flush_cache()
    outs = llama_engine.generate(input_ids=prompts, sampling_params=GREEDY)
    llama_engine.check_no_leak()
    assert sorted(o["meta_info"]["cached_tokens"] for o in outs)[1:] == [48] * 7  # all but the first
    for prompt, out in zip(prompts, outs):
        assert_greedy_equal(hf, prompt, out["output_ids"], hf_greedy(hf, prompt, NEW_TOKENS))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunked_prefill_size": 16},
        {"page_size": 4},
        {"page_size": 4, "chunked_prefill_size": 16},
        {"disable_radix_cache": True},
        {"disable_radix_cache": True, "chunked_prefill_size": 16},
        {"schedule_policy": "fcfs"},
        {"max_running_requests": 3},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_configurations_keep_outputs(tiny_llama_dir: str, kwargs: dict) -> None:
    hf = load_hf_model(tiny_llama_dir)
    base = [random.Random(3).randrange(3, 400) for _ in range(30)]
    prompts = random_prompts(6, 20, 60, seed=2) + [base + [11, 12], base + [13]]
    outs = run_engine(tiny_llama_dir, prompts, **kwargs)
    for prompt, out in zip(prompts, outs):
        assert_greedy_equal(hf, prompt, out["output_ids"], hf_greedy(hf, prompt, NEW_TOKENS))
    if kwargs.get("disable_radix_cache"):
        assert all(o["meta_info"]["cached_tokens"] == 0 for o in outs)


def test_retraction_under_tiny_pool(tiny_llama_dir: str) -> None:
    """256 slots, 16 requests of 64 prompt + 64 output tokens: requests must be retracted and
    resumed, and all finish with the reference tokens."""
    hf = load_hf_model(tiny_llama_dir)
    prompts = random_prompts(16, 64, 65, seed=5)
    params = {**GREEDY, "max_new_tokens": 64}
    with radixlm.Engine(tiny_llama_dir, max_total_tokens=256, dtype="float32", log_level="warning") as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        assert engine.get_server_info()["num_retracted_reqs"] > 0
        engine.check_no_leak()
    for prompt, out in zip(prompts, outs):
        assert out["meta_info"]["finish_reason"]["type"] == "length"
        assert_greedy_equal(hf, prompt, out["output_ids"], hf_greedy(hf, prompt, 64))


def test_dummy_weights_load_and_run(tiny_llama_dir: str) -> None:
    outs = run_engine(tiny_llama_dir, random_prompts(2, 5, 10), load_format="dummy")
    assert all(len(o["output_ids"]) == NEW_TOKENS for o in outs)


def test_missing_model_path_is_a_clear_error(tmp_path: pytest.TempPathFactory) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        radixlm.Engine(missing)
    with pytest.raises(FileNotFoundError, match="config.json"):
        radixlm.Engine(str(tmp_path))


def test_fp8_kv_cache_stays_close_to_full_precision(tiny_llama_dir: str) -> None:
    """`kv_cache_dtype=fp8_e4m3` stores K/V in 8 bits: prompt logprobs move a little (so the
    fp8 pool is really in use) but stay near the float32 ones."""
    prompts = random_prompts(4, 20, 40, seed=5)
    runs = {}
    for kv in ("auto", "fp8_e4m3"):
        with radixlm.Engine(tiny_llama_dir, dtype="float32", kv_cache_dtype=kv, log_level="warning") as engine:
            outs = engine.generate(
                input_ids=prompts,
                sampling_params={**GREEDY, "max_new_tokens": 4},
                return_logprob=True,
                logprob_start_len=0,
            )
            engine.check_no_leak()
        runs[kv] = [[lp for lp, _tok in o["meta_info"]["input_token_logprobs"][1:]] for o in outs]
    full = torch.tensor(sum(runs["auto"], []))
    fp8 = torch.tensor(sum(runs["fp8_e4m3"], []))
    diff = (full - fp8).abs()
    assert diff.max() > 1e-3, "fp8 pool gave the float32 logprobs: not in use"
    spread = (full - full.mean()).abs().mean()  # how much logprobs differ between positions
    assert diff.mean() < 0.15 * spread and diff.max() < 0.5, (diff.mean(), diff.max(), spread)
