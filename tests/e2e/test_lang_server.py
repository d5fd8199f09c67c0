"""The frontend language on a live `radixlm.entrypoints.launch` (tiny random Llama) through
`RuntimeEndpoint`: SGLang's README programs compared with direct `/generate` calls, prefix
sharing across a batch, and failures that raise instead of hanging."""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import pytest
from helpers import lang_checks as checks
from helpers.lang_utils import SYSTEM_PROMPT, geography_qa, metric, text_qa
from helpers.server_utils import free_port

import radixlm as sgl


@pytest.fixture(scope="module")
def endpoint(url: str, tiny_tokenizer: Any) -> tuple[str, Any]:
    """The shared server's URL and its tokenizer."""
    return url, tiny_tokenizer


@pytest.fixture(scope="module")
def backend(endpoint: tuple[str, Any]) -> Iterator[sgl.RuntimeEndpoint]:
    be = sgl.RuntimeEndpoint(endpoint[0])
    yield be
    be.shutdown()


def _direct(base_url: str):
    def call(text: str, params: dict, **kw) -> dict:
        resp = httpx.post(f"{base_url}/generate", json={"text": text, "sampling_params": params, **kw}, timeout=120)
        resp.raise_for_status()
        return resp.json()

    return call


def test_multi_turn_question(endpoint, backend) -> None:
    checks.check_multi_turn(backend, _direct(endpoint[0]), endpoint[1])


def test_tool_use_select(endpoint, backend) -> None:
    checks.check_tool_use(backend, _direct(endpoint[0]), endpoint[1])


def test_tip_suggestion_fork(endpoint, backend) -> None:
    checks.check_tip_suggestion(backend, _direct(endpoint[0]), endpoint[1])


def test_image_qa_rejected_on_text_only_model(backend) -> None:
    checks.check_image_qa_rejected(backend)


def test_regex_ip_address(backend) -> None:
    checks.check_regex_ip(backend)


def test_json_character_with_regex(backend) -> None:
    checks.check_character_json(backend)


def test_json_schema(backend) -> None:
    checks.check_json_schema(backend)


def test_run_batch(endpoint, backend) -> None:
    checks.check_run_batch(backend, _direct(endpoint[0]))


def test_streaming(backend) -> None:
    checks.check_streaming(backend)


def test_run_batch_computes_shared_system_prompt_once(endpoint, backend) -> None:
    """32 programs with one system prompt: the batch caches the traced common prefix with one
    request, then every program's prompt hits the cache for all of it."""
    base_url, tokenizer = endpoint
    sgl.flush_cache(backend)
    prefix = backend.chat_template.begin("system", True) + SYSTEM_PROMPT + backend.chat_template.end("system")
    prefix += backend.chat_template.begin("user", False)
    prefix_tokens = len(tokenizer.encode(prefix))
    requests_before, cached_before = metric(base_url, "radixlm_num_requests"), metric(base_url, "radixlm_cached_tokens")
    states = geography_qa.run_batch(
        [{"question": f"What is the capital of country number {i}?"} for i in range(32)], backend=backend, temperature=0
    )
    assert all(s.error() is None for s in states)
    cached = [s.get_meta_info("answer")["cached_tokens"] for s in states]
    assert min(cached) >= prefix_tokens - 1, (cached, prefix_tokens)
    assert metric(base_url, "radixlm_num_requests") - requests_before == 33  # 32 programs + 1 warm-up
    assert metric(base_url, "radixlm_cached_tokens") - cached_before >= 32 * (prefix_tokens - 1)


def test_backend_error_raises_in_run_and_is_recorded_in_run_batch(backend) -> None:
    with pytest.raises(sgl.ProgramError, match="HTTP 400") as info:
        text_qa.run(question="x", backend=backend, top_p=5.0)
    assert isinstance(info.value.__cause__, sgl.BackendError)
    states = text_qa.run_batch([{"question": "a"}, {"question": "b"}], backend=backend, top_p=5.0)
    assert all(isinstance(s.error(), sgl.ProgramError) for s in states)
    with pytest.raises(sgl.ProgramError):
        states[0]["answer"]  # reading what was never produced raises too, at once


def test_unknown_variable_raises(backend) -> None:
    @sgl.function
    def reads_missing(s):
        s += "Q: hi\nA:" + sgl.gen("answer", max_tokens=2)
        s += s["answr"]

    start = time.monotonic()
    with pytest.raises(KeyError, match="answr"):
        reads_missing.run(backend=backend)
    assert time.monotonic() - start < 30


def test_unreachable_server_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(sgl.BackendError, match="get_model_info"):
        sgl.RuntimeEndpoint(f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 15


def test_control_routes(backend) -> None:
    sgl.flush_cache(backend)
    assert "max_total_num_tokens" in sgl.get_server_info(backend)
    assert backend.model_info["is_generation"] is True
