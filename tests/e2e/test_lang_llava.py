"""`sgl.image` on the native backends with a vision model served (tiny LLaVA-1.5): the in-process
Engine backend and RuntimeEndpoint over HTTP; each answer equals a direct generate call on the
program's text (which holds the image placeholder) with the same image."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from helpers.server_utils import launch_server, stop
from helpers.tiny_llava import IMAGE_TOKEN, make_image, make_tiny_llava
from helpers.tiny_models import make_tiny_tokenizer

import radixlm as sgl

ARGS = {"dtype": "float32", "max_total_tokens": 2048, "log_level": "warning"}


@sgl.function
def image_qa(s: Any, picture: bytes, question: str) -> None:
    s += sgl.user(sgl.image(picture) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8, temperature=0))


@sgl.function
def image_choice(s: Any, picture: bytes) -> None:
    s += sgl.user(sgl.image(picture) + "colour?")
    s += sgl.assistant(sgl.select("colour", choices=["red", "green", "blue"]))


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("llava_lang")
    return make_tiny_llava(root, make_tiny_tokenizer(root))


@pytest.fixture(scope="module")
def engine(llava_dir: str) -> Iterator[sgl.Engine]:
    with sgl.Engine(llava_dir, **ARGS) as eng:
        yield eng
        eng.check_no_leak()


def _check_program(backend: Any, engine: sgl.Engine) -> None:
    picture = make_image(31)
    state = image_qa.run(picture=picture, question="what is it?", backend=backend)
    text = state.text()
    assert text.count(IMAGE_TOKEN) == 1
    head = text[: text.rindex("ASSISTANT: ") + len("ASSISTANT: ")]  # the text the answer was generated after
    direct = engine.generate(head, {"max_new_tokens": 8, "temperature": 0}, image_data=picture)
    assert state["answer"] == direct["text"]
    other = image_qa.run(picture=make_image(32), question="what is it?", backend=backend)
    assert other.text().count(IMAGE_TOKEN) == 1
    chosen = image_choice.run(picture=picture, backend=backend)
    assert chosen["colour"] in ("red", "green", "blue")


def test_image_on_engine_backend(engine: sgl.Engine) -> None:
    _check_program(engine, engine)


def test_image_on_runtime_endpoint(engine: sgl.Engine, llava_dir: str) -> None:
    url, proc = launch_server(llava_dir)
    try:
        backend = sgl.RuntimeEndpoint(url)
        assert backend.supports_images and backend.image_token == IMAGE_TOKEN
        _check_program(backend, engine)
    finally:
        stop(proc)
