"""LLaVA-NeXT (any-resolution tiling) on the Engine: greedy tokens equal HF `generate` with
the same pixel inputs and image sizes (float32, CPU); HF itself checks that each image's
placeholder count equals its feature rows, so a wrong count fails there too."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from helpers.tiny_llava import IMAGE_TOKEN, expand, hf_llava_greedy, make_image
from helpers.vlm import leak_checked_engine

from radixlm.multimodal.anyres import anyres_token_count

GREEDY = {"max_new_tokens": 16, "temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def next_dir(tiny_vlm: Callable[[str], str]) -> str:
    return tiny_vlm("llava_next")


@pytest.fixture(scope="module")
def engine(next_dir: str) -> Iterator[Any]:
    with leak_checked_engine(next_dir, max_total_tokens=4096) as eng:
        yield eng


def _counts(engine: Any, sizes: list[tuple[int, int]]) -> list[int]:
    return [anyres_token_count(engine.model_config, (h, w)) for w, h in sizes]


@pytest.mark.parametrize("size", [(40, 30), (20, 50), (64, 64)], ids=["wide", "tall", "square"])
def test_one_image_matches_hf(engine: Any, next_dir: str, size: tuple[int, int]) -> None:
    ids = engine.tokenizer.encode(f"see {IMAGE_TOKEN} now")
    image = make_image(41, size=size)
    out = engine.generate(input_ids=ids, image_data=image, sampling_params=GREEDY)
    counts = _counts(engine, [size])
    assert out["meta_info"]["prompt_tokens"] == len(ids) - 1 + counts[0]
    image_id = engine.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert out["output_ids"] == hf_llava_greedy(next_dir, expand(ids, image_id, counts), [image], 16)


def test_two_images_of_different_sizes(engine: Any, next_dir: str) -> None:
    ids = engine.tokenizer.encode(f"{IMAGE_TOKEN} and {IMAGE_TOKEN}?")
    sizes = [(40, 30), (20, 50)]
    images = [make_image(42, size=sizes[0]), make_image(43, size=sizes[1])]
    out = engine.generate(input_ids=ids, image_data=images, sampling_params=GREEDY)
    image_id = engine.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert out["output_ids"] == hf_llava_greedy(next_dir, expand(ids, image_id, _counts(engine, sizes)), images, 16)


def test_batch_mixing_image_and_text_requests_and_the_cache(engine: Any, next_dir: str) -> None:
    """One batch: an image request, a text-only one, and the first one's image again (the
    second time a cache hit over its whole span once the first is in the tree)."""
    assert engine.flush_cache()
    image_id = engine.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    prompts = [engine.tokenizer.encode(f"look {IMAGE_TOKEN} here"), engine.tokenizer.encode("no picture at all")]
    images = [make_image(44, size=(50, 20)), None]
    outs = engine.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY)
    count = _counts(engine, [(50, 20)])
    assert outs[0]["output_ids"] == hf_llava_greedy(next_dir, expand(prompts[0], image_id, count), [images[0]], 16)
    assert outs[1]["output_ids"] == hf_llava_greedy(next_dir, prompts[1], [], 16)
    again = engine.generate(input_ids=prompts[0], image_data=images[0], sampling_params=GREEDY)
    assert again["output_ids"] == outs[0]["output_ids"]
    assert again["meta_info"]["cached_tokens"] == again["meta_info"]["prompt_tokens"] - 1
