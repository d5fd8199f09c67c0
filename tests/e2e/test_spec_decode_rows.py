"""NGRAM verify steps run as decode rows (one row per token, several rows per request: what the
decode CUDA graphs run on the GPU), forced on the CPU, on random prompts in float32: greedy
outputs equal plain decoding's token for token over 72 tokens at batch 1 and 8. The plain run's
top-1 - top-2 logit margins are checked to stay far above float32 rounding, so no near-tie can
excuse a difference: any is a wrong position, KV row or acceptance."""

from __future__ import annotations

import random
from typing import Any

import pytest
from helpers.inproc_scheduler import generate, make_scheduler

from radixlm.forward.batch import ForwardMode
from radixlm.sampling.sampling_params import SamplingParams

NEW_TOKENS = 72


def _decode_rows_scheduler(model_dir: str, batch: int, seen: list[tuple[int, int]]) -> Any:
    """An NGRAM scheduler whose every verify step runs as decode rows (the CPU has no graphs,
    so `decode_rows` would be 0); `seen` gets (requests, rows) of each decode-row verify."""
    sched = make_scheduler(model_dir, speculative_algorithm="NGRAM", max_running_requests=batch)
    sched.spec.decode_rows = 10**6
    build = sched.spec.decode_batch

    def noted(reqs: list[Any]) -> Any:
        verify = build(reqs)
        if verify is not None and verify.forward.mode is ForwardMode.DECODE:
            seen.append((len(reqs), verify.forward.batch_size))
        return verify

    sched.spec.decode_batch = noted
    return sched


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_row_verify_equals_plain_on_random_prompts(tiny_llama_dir: str, batch: int) -> None:
    seen: list[tuple[int, int]] = []
    spec = _decode_rows_scheduler(tiny_llama_dir, batch, seen)
    plain = make_scheduler(tiny_llama_dir, max_running_requests=batch)
    rng = random.Random(batch)
    vocab = plain.runner.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(40)] for _ in range(batch)]
    params = [SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)] * batch
    want = generate(plain, prompts, params, return_logprob=True, top_logprobs_num=2)
    got = generate(spec, prompts, params)
    margins = [top[0][0] - top[1][0] for r in want for top in r["meta"]["output_top_logprobs"]]
    assert min(margins) > 1e-4, "the workload has a near-tie: pick another seed"
    for i, (w, g) in enumerate(zip(want, got)):
        assert len(w["ids"]) == NEW_TOKENS
        first = next((j for j, (x, y) in enumerate(zip(w["ids"], g["ids"])) if x != y), None)
        assert first is None, f"request {i} differs first at token {first}"
    assert any(rows > reqs for reqs, rows in seen), "no verify ran drafts as decode rows"
    info = spec.info()
    assert 0 < info["spec_accepted_tokens"] < info["spec_draft_tokens"], info  # accepted and rejected drafts
