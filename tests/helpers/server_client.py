"""Clients and request helpers of the server tests: httpx and official-openai clients whose every
response status is recorded in STATUSES (each server test module ends by checking that none was a
5xx), and small helpers for the native and OpenAI-compatible routes."""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx

MODEL = "tiny_llama"  # the served name: the model directory's base name
PROMPT = "The capital of France is"
STATUSES: list[int] = []  # every status the shared server answered the recording clients


def _record(response: httpx.Response) -> None:
    STATUSES.append(response.status_code)


def recording_client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(timeout=120.0, event_hooks={"response": [_record]}, **kwargs)


def native(http: httpx.Client, payload: dict) -> Any:
    """POST /generate, asserting 200."""
    response = http.post("/generate", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def greedy(http: httpx.Client, text: str, max_new_tokens: int, **params: Any) -> dict:
    return native(
        http, {"text": text, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, **params}}
    )


def sse_events(lines: Iterator[str]) -> Iterator[str]:
    """The payloads of `data: ...` lines of a server-sent-event stream."""
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: ") :]
        else:
            assert line == "", f"unexpected stream line {line!r}"


def render_chat(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The prompt ids the server builds for `messages` (the template already holds the BOS)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def wait_idle(http: httpx.Client, timeout: float = 30.0) -> dict:
    """Poll until nothing runs and every KV slot is free or held by the radix cache."""
    deadline = time.monotonic() + timeout
    while True:
        info = http.get("/get_server_info").json()
        if (
            info["num_running_reqs"] == 0
            and info["num_waiting_reqs"] == 0
            and info["available_kv_tokens"] + info["cached_tokens"] == info["max_total_num_tokens"]
        ):
            return info
        assert time.monotonic() < deadline, f"server not idle after {timeout} s: {info}"
        time.sleep(0.2)


def assert_error(response: httpx.Response, status: int) -> dict:
    """`response` has `status` and an OpenAI-style error body; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["code"] == status
    return error
