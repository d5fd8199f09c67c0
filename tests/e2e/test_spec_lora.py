"""Speculative decoding beside LoRA adapters: NGRAM verify steps of requests on two adapters and
the base model, in one batch, give the plain scheduler's tokens (a verify step that lost its
adapter would not)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("peft")
pytestmark = pytest.mark.slow  # two engine starts with adapters: about a minute

from helpers.tiny_lora import make_adapter  # noqa: E402

PROMPTS = [[5 + (i * 7 + j) % 50 for j in range(16)] * 2 for i in range(3)]
GREEDY = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}


def test_ngram_with_adapters_equals_plain(engine_factory: Any, tiny_model: Any, tmp_path: Any) -> None:
    base = tiny_model("llama")
    paths = [f"A={make_adapter(base, tmp_path / 'a', 8, ['q_proj', 'v_proj'], 1)}"]
    paths.append(f"B={make_adapter(base, tmp_path / 'b', 4, ['gate_proj', 'down_proj'], 2)}")
    common = dict(lora_paths=paths, dtype="float32", max_total_tokens=4096, num_threads=1, log_level="warning")
    plain = engine_factory(base, **common)
    spec = engine_factory(base, speculative_algorithm="NGRAM", speculative_num_draft_tokens=5, **common)
    names = ["A", "B", None]
    want = [r["output_ids"] for r in plain.generate(input_ids=PROMPTS, sampling_params=GREEDY, lora_path=names)]
    got = [r["output_ids"] for r in spec.generate(input_ids=PROMPTS, sampling_params=GREEDY, lora_path=names)]
    assert got == want
    base_only = plain.generate(input_ids=PROMPTS[0], sampling_params=GREEDY)["output_ids"]
    assert base_only != want[0]  # the adapter changes the tokens
    assert spec.get_server_info()["spec_draft_tokens"] > 0
    spec.check_no_leak()
