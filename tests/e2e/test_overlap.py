"""Overlap scheduling: launching batch N+1 before finishing batch N changes no output.

The same mixed workload (stop tokens and strings that end requests while the next batch is
already launched, n>1, logprobs, penalties and a grammar that turn overlap off for a step,
streaming, prefix sharing) runs with and without overlap; every field of every result must
match, the overlapped run must really have overlapped, and no KV slot may leak.
"""

from __future__ import annotations

import importlib.util
import random
from typing import Any

import pytest

import radixlm

HAVE_XGRAMMAR = importlib.util.find_spec("xgrammar") is not None  # the device image lacks it


def workload() -> tuple[list[list[int]], list[dict]]:
    rng = random.Random(4)
    shared = [rng.randrange(3, 400) for _ in range(40)]
    prompts, params = [], []
    for i in range(24):
        prompt = (shared if i % 3 == 0 else []) + [rng.randrange(3, 400) for _ in range(rng.randrange(4, 30))]
        p: dict[str, Any] = {"temperature": 0, "max_new_tokens": rng.choice([1, 2, 5, 17, 40]), "ignore_eos": True}
        if i % 4 == 1:
            p["stop_token_ids"] = rng.sample(range(3, 400), 120)  # ends early, mid-flight
        if i % 6 == 2:
            p.update(temperature=0.8, seed=i, top_k=20)
        if i == 5:
            p["repetition_penalty"] = 1.3  # needs its previous token on the host
        if i == 7:
            p["n"] = 3
            p["temperature"], p["seed"] = 1.0, 7
        if i == 9 and HAVE_XGRAMMAR:
            p["regex"] = "(ab|cd)+e"
            p["max_new_tokens"] = 30
        prompts.append(prompt)
        params.append(p)
    return prompts, params


def run(path: str, **kwargs: Any) -> tuple[list[dict], dict]:
    prompts, params = workload()
    with radixlm.Engine(path, dtype="float32", max_total_tokens=4096, log_level="warning", **kwargs) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True, top_logprobs_num=2)
        streamed = [c for c in engine.generate(input_ids=prompts[4], sampling_params=params[4], stream=True)]
        info = engine.get_server_info()
        engine.check_no_leak()
    return outs + [{"stream": [(c["output_ids"], c["meta_info"]["finish_reason"]) for c in streamed]}], info


LOGPROB_KEYS = ("input_token_logprobs", "input_top_logprobs", "output_token_logprobs", "output_top_logprobs")


def comparable(out: dict) -> Any:
    """Everything but logprobs, exactly (batches differ in size between the two runs, so float
    sums may differ in the last bits: logprobs are compared within 1e-4 by `logprob_values`)."""
    if "stream" in out:
        return out["stream"]
    meta = {k: v for k, v in out["meta_info"].items() if k not in ("id", "e2e_latency", *LOGPROB_KEYS)}
    return out["output_ids"], out["text"], meta


def logprob_values(out: dict) -> list[float]:
    flat: list[float] = []
    for key in LOGPROB_KEYS:
        for entry in out.get("meta_info", {}).get(key, []):
            pairs = [entry] if entry and not isinstance(entry, list) else (entry or [])
            flat.extend(lp for lp, _tok in pairs if lp is not None)
    return flat


def test_overlap_changes_no_output(tiny_llama_dir: str) -> None:
    overlapped, info_on = run(tiny_llama_dir)
    serial, info_off = run(tiny_llama_dir, disable_overlap_schedule=True)
    assert [comparable(o) for o in overlapped] == [comparable(o) for o in serial]
    for a, b in zip(overlapped, serial):
        assert logprob_values(a) == pytest.approx(logprob_values(b), abs=1e-4)
    assert sum(len(logprob_values(o)) for o in overlapped) > 100
    assert info_off["num_overlapped_steps"] == 0
    assert info_on["num_overlapped_steps"] > 0.5 * info_off["num_forward_steps"] > 0
    per_output = [p for p in workload()[1] for _ in range(p.get("n", 1))]  # n > 1: n outputs in a row
    stopped = [o for o, p in zip(overlapped, per_output) if "stop_token_ids" in p]
    assert any(o["meta_info"]["finish_reason"]["type"] == "stop" for o in stopped)  # finishes mid-flight happened


@pytest.mark.parametrize("overlap", [True, False])
def test_chunks_of_a_cold_prompt_are_not_cache_hits(tiny_llama_dir: str, overlap: bool) -> None:
    """A 40-token prompt prefilled in chunks of 16 never hit the cache: `cached_tokens` stays 0
    in every streamed chunk (its own first chunk, already in the tree, is not a hit); the same
    prompt again reports the hit."""
    prompt = [random.Random(9).randrange(3, 400) for _ in range(40)]
    params = {"temperature": 0, "max_new_tokens": 3, "ignore_eos": True}
    with radixlm.Engine(
        tiny_llama_dir,
        dtype="float32",
        max_total_tokens=4096,
        chunked_prefill_size=16,
        disable_overlap_schedule=not overlap,
        log_level="warning",
    ) as engine:
        chunks = list(engine.generate(input_ids=prompt, sampling_params=params, stream=True))
        again = engine.generate(input_ids=prompt, sampling_params=params)
        engine.check_no_leak()
    assert [c["meta_info"]["cached_tokens"] for c in chunks] == [0] * len(chunks)
    assert again["meta_info"]["cached_tokens"] >= 32
