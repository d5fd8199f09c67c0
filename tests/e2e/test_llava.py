"""LLaVA-1.5 end to end on the Engine: greedy tokens equal HF `generate` with the same pixel
inputs (float32, CPU), images in batches and chunks, the radix cache over image spans, and
the errors for bad images and unsupported vision architectures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from helpers.tiny_llava import (
    IMAGE_TOKEN,
    TOKENS_PER_IMAGE,
    expand,
    hf_llava_greedy,
    huge_png_header,
    make_image,
)
from helpers.vlm import ARGS, leak_checked_engine

import radixlm

NEW = 16
GREEDY = {"max_new_tokens": NEW, "temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def llava_dir(tiny_vlm: Callable[[str], str]) -> str:
    return tiny_vlm("llava")


@pytest.fixture(scope="module")
def engine(llava_dir: str) -> Iterator[Any]:
    with leak_checked_engine(llava_dir, max_images_per_request=3) as eng:
        yield eng


def ids_of(engine: Any, text: str) -> list[int]:
    return engine.tokenizer.encode(text)


def image_id(engine: Any) -> int:
    return engine.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def hf_ref(path: str, engine: Any, ids: list[int], images: list[bytes]) -> list[int]:
    return hf_llava_greedy(path, expand(ids, image_id(engine)), images, NEW)


def test_one_image_matches_hf(engine: Any, llava_dir: str) -> None:
    ids = ids_of(engine, f"hello {IMAGE_TOKEN} what is this?")
    out = engine.generate(input_ids=ids, image_data=make_image(1), sampling_params=GREEDY)
    assert out["output_ids"] == hf_ref(llava_dir, engine, ids, [make_image(1)])
    assert out["meta_info"]["prompt_tokens"] == len(ids) - 1 + TOKENS_PER_IMAGE


def test_image_changes_the_answer(engine: Any) -> None:
    """The pixels reach the model: two different images give different greedy outputs."""
    ids = ids_of(engine, f"{IMAGE_TOKEN} describe")
    a = engine.generate(input_ids=ids, image_data=make_image(2), sampling_params=GREEDY)
    b = engine.generate(input_ids=ids, image_data=make_image(3), sampling_params=GREEDY)
    assert a["output_ids"] != b["output_ids"]


def test_two_images_in_one_request(engine: Any, llava_dir: str) -> None:
    ids = ids_of(engine, f"first {IMAGE_TOKEN} second {IMAGE_TOKEN} compare")
    images = [make_image(4), make_image(5, size=(20, 50))]
    out = engine.generate(input_ids=ids, image_data=images, sampling_params=GREEDY)
    assert out["output_ids"] == hf_ref(llava_dir, engine, ids, images)


def test_batch_mixing_image_and_text_requests(engine: Any, llava_dir: str) -> None:
    assert engine.flush_cache()
    prompts = [
        ids_of(engine, f"{IMAGE_TOKEN} one"),
        ids_of(engine, "just text here"),
        ids_of(engine, f"two {IMAGE_TOKEN} {IMAGE_TOKEN}"),
    ]
    images = [make_image(6), None, [make_image(7), make_image(6)]]
    outs = engine.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY)
    for prompt, image, out in zip(prompts, images, outs):
        wanted = [] if image is None else image if isinstance(image, list) else [image]
        assert out["output_ids"] == hf_ref(llava_dir, engine, prompt, wanted)


def test_chunked_prefill_splitting_images_matches_hf(llava_dir: str) -> None:
    """Chunks of 8 tokens cut through every 16-token image span."""
    images = [make_image(8), make_image(9)]
    with radixlm.Engine(llava_dir, **ARGS, chunked_prefill_size=8) as eng:
        ids = ids_of(eng, f"a {IMAGE_TOKEN} b {IMAGE_TOKEN} c")
        out = eng.generate(input_ids=ids, image_data=images, sampling_params=GREEDY)
        eng.check_no_leak()
        assert out["output_ids"] == hf_ref(llava_dir, eng, ids, images)


def test_radix_cache_hits_same_image_only(engine: Any) -> None:
    assert engine.flush_cache()
    before = ids_of(engine, "the text before the image")
    ids = before + [image_id(engine)] + ids_of(engine, " and after")
    total = len(ids) - 1 + TOKENS_PER_IMAGE
    first = engine.generate(input_ids=ids, image_data=make_image(10), sampling_params=GREEDY)
    again = engine.generate(input_ids=ids, image_data=make_image(10), sampling_params=GREEDY)
    other = engine.generate(input_ids=ids, image_data=make_image(11), sampling_params=GREEDY)
    assert first["meta_info"]["cached_tokens"] == 0
    assert again["meta_info"]["cached_tokens"] == total - 1  # all but the last prompt token
    assert again["output_ids"] == first["output_ids"]
    assert other["meta_info"]["cached_tokens"] == len(before)  # nothing past the text before the image
    assert other["output_ids"] != first["output_ids"]


def test_outputs_equal_with_cache_disabled(engine: Any, llava_dir: str) -> None:
    ids = ids_of(engine, f"{IMAGE_TOKEN} cached?")
    cached = engine.generate(input_ids=ids, image_data=make_image(12), sampling_params=GREEDY)
    with radixlm.Engine(llava_dir, **ARGS, disable_radix_cache=True) as eng:
        plain = eng.generate(input_ids=ids, image_data=make_image(12), sampling_params=GREEDY)
    assert plain["output_ids"] == cached["output_ids"]


@pytest.mark.parametrize(
    "image, problem",
    [
        (b"definitely not an image", "image 0 is not an image"),
        (make_image(13)[:60], "image 0 is truncated or corrupt"),
        (huge_png_header(), "image 0 has too many pixels"),
    ],
    ids=["not-an-image", "truncated-png", "50k-by-50k"],
)
def test_bad_images_are_named(engine: Any, image: bytes, problem: str) -> None:
    ids = ids_of(engine, f"{IMAGE_TOKEN} x")
    with pytest.raises(ValueError, match=problem):
        engine.generate(input_ids=ids, image_data=image, sampling_params=GREEDY)
    assert engine.generate(input_ids=ids, image_data=make_image(1), sampling_params=GREEDY)["output_ids"]


def test_too_many_images_and_mismatched_placeholders(engine: Any) -> None:
    four = ids_of(engine, IMAGE_TOKEN * 4)
    with pytest.raises(ValueError, match="4 images; this server takes at most 3"):
        engine.generate(input_ids=four, image_data=[make_image(i) for i in range(4)], sampling_params=GREEDY)
    with pytest.raises(ValueError, match="1 image placeholders .* for 2 images"):
        engine.generate(input_ids=ids_of(engine, f"{IMAGE_TOKEN}"), image_data=[make_image(1)] * 2)


def test_unsupported_vision_architecture_is_named(llava_dir: str, tmp_path: Path) -> None:
    other = tmp_path / "other_vlm"
    shutil.copytree(llava_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["Idefics3ForConditionalGeneration"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="multimodal architecture \\['Idefics3ForConditionalGeneration'\\] is not supported"
    ):
        radixlm.Engine(str(other), **ARGS)


def test_text_only_model_refuses_images(llama_engine: Any) -> None:
    with pytest.raises(ValueError, match="accepts text only"):
        llama_engine.generate(input_ids=[5, 6], image_data=make_image(1))


def test_prompt_logprobs_only_after_the_last_image(engine: Any) -> None:
    ids = ids_of(engine, f"{IMAGE_TOKEN} score these words")
    end = TOKENS_PER_IMAGE  # the image's span is the first 16 positions
    with pytest.raises(ValueError, match=f"logprob_start_len >= {end}"):
        engine.generate(input_ids=ids, image_data=make_image(1), return_logprob=True, logprob_start_len=3)
    out = engine.generate(
        input_ids=ids, image_data=make_image(1), return_logprob=True, logprob_start_len=end, sampling_params=GREEDY
    )
    scored = out["meta_info"]["input_token_logprobs"]
    assert len(scored) == len(ids) - 1 and all(lp is not None and lp <= 0 for lp, _tok, *_ in scored)


def test_unsupported_settings_are_named(llava_dir: str) -> None:
    from radixlm.model_loader.loader import check_tensor_parallel, load_model_config

    config = load_model_config(llava_dir)
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration runs with tp_size=1"):
        check_tensor_parallel(config, "auto", 2)
    with pytest.raises(RuntimeError, match="model_impl='transformers' cannot serve the vision model"):
        radixlm.Engine(llava_dir, **ARGS, model_impl="transformers")
