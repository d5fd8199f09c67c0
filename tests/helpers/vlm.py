"""Scaffolding the vision-model end-to-end tests share (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL on the
Engine, behind a server and under the frontend language): the tiny model directories (built
once a session by conftest's `tiny_vlm`), the engine arguments, a leak-checked module engine,
data URLs, and the language programs' "answers as a direct generate call" check."""

from __future__ import annotations

import base64
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

ARGS = {"dtype": "float32", "max_total_tokens": 2048, "log_level": "warning"}
KINDS = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")


def make_tiny_vlm(root: Path, tokenizer_dir: str, kind: str) -> str:
    """The tiny random model of `kind` (one of KINDS; seed 0) saved under `root`; its directory."""
    from helpers.tiny_llava import make_tiny_llava
    from helpers.tiny_qwen2vl import make_tiny_qwen2vl

    if kind in ("llava", "llava_next"):
        return make_tiny_llava(root, tokenizer_dir, next_=kind == "llava_next")
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        return make_tiny_qwen2vl(root, tokenizer_dir, v25=kind == "qwen2_5_vl")
    raise ValueError(f"unknown tiny vision model {kind!r}; one of {KINDS}")


@contextmanager
def leak_checked_engine(model_dir: str, **overrides: Any) -> Iterator[Any]:
    """A `radixlm.Engine` on `model_dir` with ARGS updated by `overrides`; on leaving, every KV
    slot must be free or held by the radix cache, then the engine shuts down."""
    import radixlm

    with radixlm.Engine(model_dir, **{**ARGS, **overrides}) as engine:
        yield engine
        engine.check_no_leak()


@contextmanager
def serving(model_dir: str, *flags: str) -> Iterator[str]:
    """A `launch_server` subprocess on `model_dir` with `flags`: its base URL, stopped on leaving."""
    from helpers.server_utils import launch_server, stop

    url, proc = launch_server(model_dir, *flags)
    try:
        yield url
    finally:
        stop(proc)


def data_url(data: bytes) -> str:
    """An image's bytes as a PNG `data:` URL."""
    return "data:image/png;base64," + base64.b64encode(data).decode()


def check_answers_as_generate(
    program: Callable[..., Any], backend: Any, engine: Any, picture: bytes, image: str, assistant: str
) -> str:
    """Run `program(picture=..., question="what is it?")` on `backend`: its text holds the image
    marker `image` once, and its `answer` equals `engine.generate` on the text up to the last
    `assistant` marker with the same image (8 greedy tokens). Returns the program's text."""
    state = program.run(picture=picture, question="what is it?", backend=backend)
    text = state.text()
    assert text.count(image) == 1
    head = text[: text.rindex(assistant) + len(assistant)]  # the text the answer was generated after
    direct = engine.generate(head, {"max_new_tokens": 8, "temperature": 0}, image_data=picture)
    assert state["answer"] == direct["text"]
    return text


def check_runtime_endpoint_images(url: str, image: str) -> Any:
    """A `RuntimeEndpoint` on the server at `url`, checked to take images marked by `image`."""
    import radixlm

    backend = radixlm.RuntimeEndpoint(url)
    assert backend.supports_images and backend.image_token == image
    return backend
