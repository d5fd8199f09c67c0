"""Speculative decoding of a Qwen2-VL request with images (M-RoPE: a verify step is an extend,
which sets the request's rotary shift): NGRAM gives the plain engine's greedy tokens."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from helpers.tiny_llava import make_image
from helpers.tiny_models import make_tiny_tokenizer
from helpers.tiny_qwen2vl import IMAGE, make_tiny_qwen2vl

pytestmark = pytest.mark.slow  # two engine starts of a vision model: about a minute

GREEDY = {"max_new_tokens": 24, "temperature": 0.0, "ignore_eos": True}


def test_ngram_on_images_equals_plain(engine_factory: Any, tmp_path: Any) -> None:
    model = make_tiny_qwen2vl(tmp_path, make_tiny_tokenizer(tmp_path))
    common = dict(dtype="float32", max_total_tokens=4096, num_threads=1, log_level="warning")
    plain = engine_factory(model, **common)
    spec = engine_factory(model, speculative_algorithm="NGRAM", speculative_num_draft_tokens=5, **common)
    image = "data:image/png;base64," + base64.b64encode(make_image(7, size=(40, 60))).decode()
    text = f"abc abd abe {IMAGE} abc abd abe abc abd abe"
    want = plain.generate(prompt=text, image_data=[image], sampling_params=GREEDY)
    got = spec.generate(prompt=text, image_data=[image], sampling_params=GREEDY)
    assert got["output_ids"] == want["output_ids"]
    assert got["meta_info"]["spec_verify_ct"] > 0 and spec.get_server_info()["spec_draft_tokens"] > 0
    spec.check_no_leak()
