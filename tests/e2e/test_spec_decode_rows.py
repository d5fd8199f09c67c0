"""NGRAM verify steps run as decode rows (one row per token, several rows per request: what the
decode CUDA graphs run on the GPU), forced on the CPU, on random prompts in float32: greedy
outputs equal plain decoding's token for token over 72 tokens at batch 1 and 8. The plain run's
top-1 - top-2 logit margins are checked to stay far above float32 rounding, so no near-tie can
excuse a difference: any is a wrong position, KV row or acceptance. The same with the Triton
attention backend (its verify kernel scores a request's rows together and stores their K/V in
the same launch), through Triton's interpreter on the CPU."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import torch
from helpers.inproc_scheduler import generate, make_scheduler
from helpers.interpreted import TESTS, run_interpreted

from radixlm.forward.batch import ForwardMode
from radixlm.sampling.sampling_params import SamplingParams

NEW_TOKENS = 72


def _decode_rows_scheduler(model_dir: str, batch: int, seen: list[tuple[int, int]], **kwargs: Any) -> Any:
    """An NGRAM scheduler whose every verify step runs as decode rows (the CPU has no graphs,
    so `decode_rows` would be 0); `seen` gets (requests, rows) of each decode-row verify."""
    sched = make_scheduler(model_dir, speculative_algorithm="NGRAM", max_running_requests=batch, **kwargs)
    sched.spec.decode_rows = 10**6
    build = sched.spec.decode_batch

    def noted(reqs: list[Any]) -> Any:
        verify = build(reqs)
        if verify is not None and verify.forward.mode is ForwardMode.DECODE:
            seen.append((len(reqs), verify.forward.batch_size))
        return verify

    sched.spec.decode_batch = noted
    return sched


def check_decode_row_verify(model_dir: str, batch: int, new_tokens: int, prompt_lens: list[int], **kwargs: Any) -> None:
    """Greedy NGRAM with every verify as decode rows (scheduler `kwargs`, e.g. an attention
    backend) equals plain decoding token for token on random prompts of `prompt_lens` tokens."""
    seen: list[tuple[int, int]] = []
    spec = _decode_rows_scheduler(model_dir, batch, seen, **kwargs)
    plain = make_scheduler(model_dir, max_running_requests=batch)
    rng = random.Random(batch)
    vocab = plain.runner.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(prompt_lens[i % len(prompt_lens)])] for i in range(batch)]
    params = [SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)] * batch
    want = generate(plain, prompts, params, return_logprob=True, top_logprobs_num=2)
    got = generate(spec, prompts, params)
    margins = [top[0][0] - top[1][0] for r in want for top in r["meta"]["output_top_logprobs"]]
    assert min(margins) > 1e-4, "the workload has a near-tie: pick another seed"
    for i, (w, g) in enumerate(zip(want, got)):
        assert len(w["ids"]) == new_tokens
        first = next((j for j, (x, y) in enumerate(zip(w["ids"], g["ids"])) if x != y), None)
        assert first is None, f"request {i} differs first at token {first}"
    assert any(rows > reqs for reqs, rows in seen), "no verify ran drafts as decode rows"
    info = spec.info()
    assert 0 < info["spec_accepted_tokens"] < info["spec_draft_tokens"], info  # accepted and rejected drafts


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_row_verify_equals_plain_on_random_prompts(tiny_llama_dir: str, batch: int) -> None:
    check_decode_row_verify(tiny_llama_dir, batch, NEW_TOKENS, [40])


def test_triton_decode_row_verify_equals_plain(tiny_llama_dir: str) -> None:
    """The Triton backend's verify kernel (compiled on a GPU, else interpreted, there with two
    splits per request instead of 16 to keep the interpreter's programs few): three requests
    with different prompt lengths, so their rows attend different prefixes."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        check_decode_row_verify(tiny_llama_dir, 3, 24, [40, 17, 29], attention_backend="triton")
        return
    code = (
        "import radixlm.attention.triton_backend as tb\n"
        "tb.decode_launch_config = lambda *shape: (2, 16)\n"
        f"t.check_decode_row_verify({tiny_llama_dir!r}, 3, 24, [40, 17, 29], attention_backend='triton')"
    )
    run_interpreted("test_spec_decode_rows", code, [os.path.join(TESTS, "e2e")])
