"""Qwen2-VL and Qwen2.5-VL end to end on the Engine: greedy tokens equal HF `generate` with the
same pixel inputs (float32, CPU; HF computes its own M-RoPE positions), images in batches and
in prefill chunks, the radix cache over image spans, and the family's chat image marker."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterator

import pytest
from helpers.tiny_llava import make_image
from helpers.tiny_qwen2vl import (
    IMAGE,
    IMAGE_PAD,
    VISION_START,
    expand,
    hf_qwen2vl_greedy,
    tokens_for,
)
from helpers.vlm import ARGS, leak_checked_engine

import radixlm

NEW = 16
GREEDY = {"max_new_tokens": NEW, "temperature": 0.0, "ignore_eos": True}
WIDE, TALL = (40, 30), (20, 50)  # patch grids 8x10 and 12x4: 20 and 12 image tokens


@pytest.fixture(scope="module")
def qwen_dir(tiny_vlm: Callable[[str], str]) -> str:
    return tiny_vlm("qwen2_vl")


@pytest.fixture(scope="module")
def engine(qwen_dir: str) -> Iterator[Any]:
    with leak_checked_engine(qwen_dir, max_images_per_request=3) as eng:
        yield eng


def ids_of(engine: Any, text: str) -> list[int]:
    return engine.tokenizer.encode(text)


def hf_ref(path: str, engine: Any, ids: list[int], images: list[bytes]) -> list[int]:
    pad = engine.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    return hf_qwen2vl_greedy(path, expand(ids, pad, [tokens_for(b) for b in images]), images, NEW)


def test_one_image_matches_hf(engine: Any, qwen_dir: str) -> None:
    ids = ids_of(engine, f"hello {IMAGE} what is this?")
    image = make_image(1, size=WIDE)
    out = engine.generate(input_ids=ids, image_data=image, sampling_params=GREEDY)
    assert out["output_ids"] == hf_ref(qwen_dir, engine, ids, [image])
    assert out["meta_info"]["prompt_tokens"] == len(ids) - 1 + tokens_for(image) == len(ids) + 19


def test_image_changes_the_answer(engine: Any) -> None:
    ids = ids_of(engine, f"{IMAGE} describe")
    a = engine.generate(input_ids=ids, image_data=make_image(2), sampling_params=GREEDY)
    b = engine.generate(input_ids=ids, image_data=make_image(3), sampling_params=GREEDY)
    assert a["output_ids"] != b["output_ids"]


def test_two_images_of_different_shapes_in_one_request(engine: Any, qwen_dir: str) -> None:
    ids = ids_of(engine, f"first {IMAGE} second {IMAGE} compare")
    images = [make_image(4, size=WIDE), make_image(5, size=TALL)]
    out = engine.generate(input_ids=ids, image_data=images, sampling_params=GREEDY)
    assert out["output_ids"] == hf_ref(qwen_dir, engine, ids, images)


def test_batch_mixing_image_and_text_requests(engine: Any, qwen_dir: str) -> None:
    assert engine.flush_cache()
    prompts = [
        ids_of(engine, f"{IMAGE} one"),
        ids_of(engine, "just text here"),
        ids_of(engine, f"two {IMAGE} and {IMAGE}"),
    ]
    images = [make_image(6, size=TALL), None, [make_image(7), make_image(6, size=TALL)]]
    outs = engine.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY)
    for prompt, image, out in zip(prompts, images, outs):
        wanted = [] if image is None else image if isinstance(image, list) else [image]
        assert out["output_ids"] == hf_ref(qwen_dir, engine, prompt, wanted)


def test_radix_cache_hits_same_image_only(engine: Any) -> None:
    assert engine.flush_cache()
    before = ids_of(engine, f"the text before the image {VISION_START}")
    ids = before + ids_of(engine, IMAGE)[1:] + ids_of(engine, " and after")
    image = make_image(10)
    total = len(ids) - 1 + tokens_for(image)
    first = engine.generate(input_ids=ids, image_data=image, sampling_params=GREEDY)
    again = engine.generate(input_ids=ids, image_data=image, sampling_params=GREEDY)
    other = engine.generate(input_ids=ids, image_data=make_image(11), sampling_params=GREEDY)
    assert first["meta_info"]["cached_tokens"] == 0
    assert again["meta_info"]["cached_tokens"] == total - 1  # all but the last prompt token
    assert again["output_ids"] == first["output_ids"]
    assert other["meta_info"]["cached_tokens"] == len(before)  # nothing past the text before the image
    assert other["output_ids"] != first["output_ids"]


@pytest.mark.slow
def test_chunked_prefill_without_cache_matches_hf_and_the_cached_engine(engine: Any, qwen_dir: str) -> None:
    """Chunks of 8 tokens cut through both image spans; no radix cache: the same tokens as HF
    and as the cached engine."""
    ids = ids_of(engine, f"a {IMAGE} b {IMAGE} c")
    images = [make_image(8, size=TALL), make_image(9, size=WIDE)]
    cached = engine.generate(input_ids=ids, image_data=images, sampling_params=GREEDY)
    with radixlm.Engine(qwen_dir, **ARGS, chunked_prefill_size=8, disable_radix_cache=True) as eng:
        out = eng.generate(input_ids=ids, image_data=images, sampling_params=GREEDY)
        eng.check_no_leak()
    assert out["output_ids"] == cached["output_ids"] == hf_ref(qwen_dir, engine, ids, images)


def test_chat_image_marker_is_the_vision_span(engine: Any) -> None:
    assert engine.images.chat_marker(engine.tokenizer) == IMAGE


@pytest.mark.slow
def test_qwen2_5_vl_matches_hf(tiny_vlm: Callable[[str], str]) -> None:
    path = tiny_vlm("qwen2_5_vl")
    with radixlm.Engine(path, **ARGS) as eng:
        prompts = [ids_of(eng, f"hello {IMAGE} what?"), ids_of(eng, f"first {IMAGE} second {IMAGE} compare")]
        images = [make_image(1, size=WIDE), [make_image(4, size=TALL), make_image(5, size=WIDE)]]
        outs = eng.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY)
        eng.check_no_leak()
        for prompt, image, out in zip(prompts, images, outs):
            assert out["output_ids"] == hf_ref(path, eng, prompt, image if isinstance(image, list) else [image])


def test_batch_equals_its_requests_alone_sync_and_async(engine: Any) -> None:
    """Each prompt of a batch is submitted as soon as its images are prepared: the batch's
    outputs (in call order) are those of each request run alone, also through async_generate."""
    prompts = [ids_of(engine, f"q{i} {IMAGE} what?") for i in range(5)]
    images = [make_image(20 + i, size=WIDE if i % 2 else TALL) for i in range(5)]
    prompts.insert(2, ids_of(engine, "a text prompt"))
    images.insert(2, None)
    alone = []
    for prompt, image in zip(prompts, images):
        assert engine.flush_cache()
        alone.append(engine.generate(input_ids=prompt, image_data=image, sampling_params=GREEDY)["output_ids"])
    assert engine.flush_cache()
    batch = engine.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY)
    assert [o["output_ids"] for o in batch] == alone
    assert engine.flush_cache()
    batch_async = asyncio.run(engine.async_generate(input_ids=prompts, image_data=images, sampling_params=GREEDY))
    assert [o["output_ids"] for o in batch_async] == alone


def test_prompts_are_submitted_while_later_images_are_prepared(engine: Any, monkeypatch: Any) -> None:
    """The second prompt's preparation is held back until the first request was submitted:
    `generate` submits the first on its own, then finishes both."""
    first_sent, release = threading.Event(), threading.Event()
    real_submit, real_client_submit = engine.images.submit, engine.client.submit
    calls: list[list[int]] = []

    def held_submit(ids: list[int], sources: list[Any]) -> Future:
        calls.append(ids)
        if len(calls) == 1:
            return real_submit(ids, sources)
        held = Future()
        threading.Thread(
            target=lambda: (release.wait(30), held.set_result(engine.images.prepare(ids, sources)))
        ).start()
        return held

    sent: list[str] = []

    def client_submit(req: Any, callback: Any) -> None:
        real_client_submit(req, callback)
        sent.append(req.rid)
        first_sent.set()

    monkeypatch.setattr(engine.images, "submit", held_submit)
    monkeypatch.setattr(engine.client, "submit", client_submit)
    prompts = [ids_of(engine, f"{IMAGE} one"), ids_of(engine, f"{IMAGE} two")]
    images = [make_image(30), make_image(31)]
    outs: list = []
    worker = threading.Thread(
        target=lambda: outs.extend(engine.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY))
    )
    worker.start()
    assert first_sent.wait(60), "no request was submitted while the second image was held"
    assert len(sent) == 1
    release.set()
    worker.join(60)
    monkeypatch.undo()
    assert [o["meta_info"]["id"] for o in outs] == sent  # in call order
    for prompt, image, out in zip(prompts, images, outs):
        assert (
            out["output_ids"]
            == engine.generate(input_ids=prompt, image_data=image, sampling_params=GREEDY)["output_ids"]
        )


def test_a_bad_image_mid_batch_raises_and_the_engine_keeps_serving(engine: Any, monkeypatch: Any) -> None:
    """The prompts before the bad one may already run: they are aborted, the call raises the
    bad image's error, and no KV slot leaks."""
    prompts = [ids_of(engine, f"{IMAGE} p{i}") for i in range(4)]
    images = [make_image(40), make_image(41), b"definitely not an image", make_image(43)]
    real_client_submit = engine.client.submit
    sent: list[str] = []

    def client_submit(req: Any, callback: Any) -> None:
        real_client_submit(req, callback)
        sent.append(req.rid)

    monkeypatch.setattr(engine.client, "submit", client_submit)
    with pytest.raises(ValueError, match="image 0 is not an image"):
        engine.generate(input_ids=prompts, image_data=images, sampling_params=GREEDY)
    with pytest.raises(ValueError, match="image 0 is not an image"):
        asyncio.run(engine.async_generate(input_ids=prompts, image_data=images, sampling_params=GREEDY))
    assert len(sent) == 4  # each call: the two prompts before the bad one, never it or a later one
    monkeypatch.undo()
    out = engine.generate(input_ids=prompts[0], image_data=make_image(40), sampling_params=GREEDY)
    assert len(out["output_ids"]) == NEW
    deadline = time.monotonic() + 30  # the aborts reach the scheduler asynchronously
    while time.monotonic() < deadline and any(engine.client.has_request(r) for r in sent):
        time.sleep(0.05)
    assert not any(engine.client.has_request(r) for r in sent)
    engine.check_no_leak()
