"""`sgl.image` on the native backends with Qwen2-VL served (tiny): the program's text holds the
family's vision span `<|vision_start|><|image_pad|><|vision_end|>` where the image sits, and the
answer equals a direct generate call on that text with the same image, on the in-process Engine
backend and on RuntimeEndpoint over HTTP."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from helpers.server_utils import launch_server, stop
from helpers.tiny_llava import make_image
from helpers.tiny_models import make_tiny_tokenizer
from helpers.tiny_qwen2vl import IMAGE, make_tiny_qwen2vl

import radixlm as sgl

ARGS = {"dtype": "float32", "max_total_tokens": 2048, "log_level": "warning"}
ASSISTANT = "<|assistant|>"  # the tiny tokenizer's chat template opens the answer with it


@sgl.function
def image_qa(s: Any, picture: bytes, question: str) -> None:
    s += sgl.user(sgl.image(picture) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8, temperature=0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("qwen2vl_lang")
    return make_tiny_qwen2vl(root, make_tiny_tokenizer(root))


@pytest.fixture(scope="module")
def engine(model_dir: str) -> Iterator[sgl.Engine]:
    with sgl.Engine(model_dir, **ARGS) as eng:
        yield eng
        eng.check_no_leak()


def _check_program(backend: Any, engine: sgl.Engine) -> None:
    picture = make_image(41, size=(24, 36))
    state = image_qa.run(picture=picture, question="what is it?", backend=backend)
    text = state.text()
    assert text.count(IMAGE) == 1 and f"{IMAGE}what is it?" in text
    head = text[: text.rindex(ASSISTANT) + len(ASSISTANT)]  # the text the answer was generated after
    direct = engine.generate(head, {"max_new_tokens": 8, "temperature": 0}, image_data=picture)
    assert state["answer"] == direct["text"]


def test_image_on_engine_backend(engine: sgl.Engine) -> None:
    _check_program(engine, engine)


def test_image_on_runtime_endpoint(engine: sgl.Engine, model_dir: str) -> None:
    url, proc = launch_server(model_dir)
    try:
        backend = sgl.RuntimeEndpoint(url)
        assert backend.supports_images and backend.image_token == IMAGE
        _check_program(backend, engine)
    finally:
        stop(proc)
