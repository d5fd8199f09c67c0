"""`sgl.image` on the native backends with a vision model served (tiny LLaVA-1.5): the in-process
Engine backend and RuntimeEndpoint over HTTP; each answer equals a direct generate call on the
program's text (which holds the image placeholder) with the same image."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from helpers.tiny_llava import IMAGE_TOKEN, make_image
from helpers.vlm import check_answers_as_generate, check_runtime_endpoint_images, leak_checked_engine, serving

import radixlm as sgl


@sgl.function
def image_qa(s: Any, picture: bytes, question: str) -> None:
    s += sgl.user(sgl.image(picture) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8, temperature=0))


@sgl.function
def image_choice(s: Any, picture: bytes) -> None:
    s += sgl.user(sgl.image(picture) + "colour?")
    s += sgl.assistant(sgl.select("colour", choices=["red", "green", "blue"]))


@pytest.fixture(scope="module")
def llava_dir(tiny_vlm: Callable[[str], str]) -> str:
    return tiny_vlm("llava")


@pytest.fixture(scope="module")
def engine(llava_dir: str) -> Iterator[sgl.Engine]:
    with leak_checked_engine(llava_dir) as eng:
        yield eng


def _check_program(backend: Any, engine: sgl.Engine) -> None:
    picture = make_image(31)
    check_answers_as_generate(image_qa, backend, engine, picture, IMAGE_TOKEN, "ASSISTANT: ")
    other = image_qa.run(picture=make_image(32), question="what is it?", backend=backend)
    assert other.text().count(IMAGE_TOKEN) == 1
    chosen = image_choice.run(picture=picture, backend=backend)
    assert chosen["colour"] in ("red", "green", "blue")


def test_image_on_engine_backend(engine: sgl.Engine) -> None:
    _check_program(engine, engine)


def test_image_on_runtime_endpoint(engine: sgl.Engine, llava_dir: str) -> None:
    with serving(llava_dir) as url:
        _check_program(check_runtime_endpoint_images(url, IMAGE_TOKEN), engine)
