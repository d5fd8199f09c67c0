"""The frontend language on an in-process `radixlm.Engine` (tiny random Llama): SGLang's README
programs, compared with direct `Engine.generate` calls."""

from __future__ import annotations

from typing import Iterator

import pytest
from helpers import lang_checks as checks

import radixlm as sgl


@pytest.fixture(scope="module")
def engine(llama_engine: sgl.Engine) -> Iterator[sgl.Engine]:
    yield llama_engine
    llama_engine.check_no_leak()


def _direct(engine: sgl.Engine):
    return lambda text, params, **kw: engine.generate(text, params, **kw)


def test_multi_turn_question(engine: sgl.Engine) -> None:
    checks.check_multi_turn(engine, _direct(engine), engine.tokenizer)


def test_tool_use_select(engine: sgl.Engine) -> None:
    checks.check_tool_use(engine, _direct(engine), engine.tokenizer)


def test_tip_suggestion_fork(engine: sgl.Engine) -> None:
    checks.check_tip_suggestion(engine, _direct(engine), engine.tokenizer)


def test_image_qa_rejected_on_text_only_model(engine: sgl.Engine) -> None:
    checks.check_image_qa_rejected(engine)


def test_regex_ip_address(engine: sgl.Engine) -> None:
    checks.check_regex_ip(engine)


def test_json_character_with_regex(engine: sgl.Engine) -> None:
    checks.check_character_json(engine)


def test_json_schema(engine: sgl.Engine) -> None:
    checks.check_json_schema(engine)


def test_run_batch(engine: sgl.Engine) -> None:
    checks.check_run_batch(engine, _direct(engine))


def test_streaming(engine: sgl.Engine) -> None:
    checks.check_streaming(engine)


def test_default_backend_is_an_engine(engine: sgl.Engine) -> None:
    sgl.set_default_backend(engine)
    try:
        s = checks.text_qa("What is 1 + 1?", temperature=0)  # calling a program runs it
        assert (
            s["answer"]
            == engine.generate("Q: What is 1 + 1?\nA:", {"max_new_tokens": 8, "stop": "\n", "temperature": 0})["text"]
        )
        assert isinstance(sgl.get_default_backend(), sgl.EngineBackend)
    finally:
        sgl.set_default_backend(None)
