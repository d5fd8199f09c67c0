"""Memory pressure: a 400-token KV pool under long prompts, long outputs and n=4
(the long version: `cd tests && python -m stress.memory --requests 200`)."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest
from helpers.server_utils import launch_server, server_log, stop
from stress.common import format_summary, server_info
from stress.memory import POOL_TOKENS, SERVER_FLAGS, never_fits, run_pressure


@pytest.fixture(scope="module")
def server(tiny_llama_dir: str) -> Iterator[tuple[str, Any]]:
    base, proc = launch_server(tiny_llama_dir, *SERVER_FLAGS)
    yield base, proc
    stop(proc)


def test_pool_smaller_than_demand_retracts_resumes_and_completes(server: tuple[str, Any], capsys: Any) -> None:
    url = server[0]
    assert server_info(url)["max_total_num_tokens"] == POOL_TOKENS
    summary, problems = run_pressure(url, requests=24, concurrency=24)
    with capsys.disabled():
        print("\n" + format_summary("memory pressure (CI)", summary), f"retractions {summary['retracted']}")
    assert not problems, problems[:5]
    assert summary["completed"] == 24
    assert summary["retracted"] > 0  # the pool really was too small: requests were retracted and resumed


def test_requests_that_can_never_fit_get_a_clear_400(server: tuple[str, Any]) -> None:
    url, proc = server
    for response in never_fits(url):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == 400 and error["type"] == "invalid_request_error"
        assert "KV pool" in error["message"] or "context" in error["message"], error["message"]
    assert httpx.get(f"{url}/health").status_code == 200
    assert proc.poll() is None and "Traceback" not in server_log(proc)


def test_chat_without_max_tokens_is_bounded_by_the_pool(server: tuple[str, Any]) -> None:
    """No max_tokens: the output room is what the pool (smaller than the context) can hold."""
    body = {"messages": [{"role": "user", "content": "hello " * 100}], "temperature": 0, "ignore_eos": True}
    response = httpx.post(f"{server[0]}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == POOL_TOKENS
