"""`sgl.image` on the native backends with Qwen2-VL served (tiny): the program's text holds the
family's vision span `<|vision_start|><|image_pad|><|vision_end|>` where the image sits, and the
answer equals a direct generate call on that text with the same image, on the in-process Engine
backend and on RuntimeEndpoint over HTTP."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from helpers.tiny_llava import make_image
from helpers.tiny_qwen2vl import IMAGE
from helpers.vlm import check_answers_as_generate, check_runtime_endpoint_images, leak_checked_engine, serving

import radixlm as sgl

ASSISTANT = "<|assistant|>"  # the tiny tokenizer's chat template opens the answer with it


@sgl.function
def image_qa(s: Any, picture: bytes, question: str) -> None:
    s += sgl.user(sgl.image(picture) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8, temperature=0))


@pytest.fixture(scope="module")
def model_dir(tiny_vlm: Callable[[str], str]) -> str:
    return tiny_vlm("qwen2_vl")


@pytest.fixture(scope="module")
def engine(model_dir: str) -> Iterator[sgl.Engine]:
    with leak_checked_engine(model_dir) as eng:
        yield eng


def _check_program(backend: Any, engine: sgl.Engine) -> None:
    text = check_answers_as_generate(image_qa, backend, engine, make_image(41, size=(24, 36)), IMAGE, ASSISTANT)
    assert f"{IMAGE}what is it?" in text


def test_image_on_engine_backend(engine: sgl.Engine) -> None:
    _check_program(engine, engine)


def test_image_on_runtime_endpoint(engine: sgl.Engine, model_dir: str) -> None:
    with serving(model_dir) as url:
        _check_program(check_runtime_endpoint_images(url, IMAGE), engine)
