"""The HTTP server under bad input, disconnects and load: every rejection an OpenAI-style 4xx,
aborted requests free the pool, 200 concurrent streams equal their solo runs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from helpers.server_client import (
    MODEL,
    PROMPT,
    STATUSES,
    assert_error,
    greedy,
    native,
    recording_client,
    sse_events,
    wait_idle,
)
from helpers.server_utils import server_log

# -- errors ----------------------------------------------------------------------------------------
LONG = "hello world " * 400  # > 512 tokens
BAD_REQUESTS = [
    ("malformed-json", "/v1/completions", b'{"model": "tiny_llama", "prompt": ', 400),
    ("malformed-json-native", "/generate", b"{not json", 400),
    ("missing-prompt", "/v1/completions", {"model": MODEL, "max_tokens": 4}, 400),
    ("missing-messages", "/v1/chat/completions", {"model": MODEL}, 400),
    ("empty-messages", "/v1/chat/completions", {"model": MODEL, "messages": []}, 400),
    ("bad-role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("not-an-object", "/v1/completions", [1, 2, 3], 400),
    ("temperature", "/v1/completions", {"model": MODEL, "prompt": "a", "temperature": -1}, 400),
    ("top-p", "/v1/completions", {"model": MODEL, "prompt": "a", "top_p": 2}, 400),
    ("top-p-chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "top_p": 2}, 400),
    ("temperature-native", "/generate", {"text": "a", "sampling_params": {"temperature": -1}}, 400),
    ("unknown-param-native", "/generate", {"text": "a", "sampling_params": {"bogus": 1}}, 400),
    ("n-zero", "/v1/completions", {"prompt": "a", "n": 0}, 400),
    ("n-huge", "/v1/completions", {"prompt": "a", "n": 100000}, 400),
    ("prompt-too-long", "/v1/completions", {"model": MODEL, "prompt": LONG, "max_tokens": 1}, 400),
    ("prompt-too-long-native", "/generate", {"text": LONG}, 400),
    ("prompt-too-long-chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400),
    ("max-tokens-past-context", "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 1000}, 400),
    (
        "max-tokens-past-context-chat",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "a"}], "max_tokens": 1000},
        400,
    ),
    ("unknown-model", "/v1/completions", {"model": "gpt-9", "prompt": "a"}, 400),
    (
        "unknown-model-chat",
        "/v1/chat/completions",
        {"model": "gpt-9", "messages": [{"role": "user", "content": "a"}]},
        400,
    ),
    ("ids-out-of-vocab", "/v1/completions", {"model": MODEL, "prompt": [[5, 99999]]}, 400),
    ("ids-out-of-vocab-native", "/generate", {"input_ids": [3, 400]}, 400),
    ("negative-id-native", "/generate", {"input_ids": [-1]}, 400),
    ("empty-prompt-native", "/generate", {"input_ids": []}, 400),
    ("stop-token-out-of-vocab", "/generate", {"text": "a", "sampling_params": {"stop_token_ids": [5000]}}, 400),
    ("detokenize-out-of-vocab", "/detokenize", {"tokens": [400]}, 400),
    ("batch-arg-length", "/generate", {"text": ["a", "b"], "return_logprob": [True]}, 400),
    ("one-rid-for-a-batch", "/generate", {"text": ["a", "b"], "rid": "same"}, 400),
    ("text-and-ids", "/generate", {"text": "a", "input_ids": [3]}, 400),
    ("unknown-route", "/v2/nothing", {}, 404),
]


# What the error message must name, for some of the cases above.
HINTS = {
    "malformed-json": "JSON",
    "missing-prompt": "prompt",
    "temperature": "temperature",
    "top-p": "top_p",
    "prompt-too-long": "prompt",
    "prompt-too-long-native": "prompt",
    "prompt-too-long-chat": "prompt",
    "max-tokens-past-context": "max_tokens",
    "unknown-model": "gpt-9",
    "ids-out-of-vocab": "[0, 400)",
    "batch-arg-length": "return_logprob",
    "one-rid-for-a-batch": "rid",
}


@pytest.mark.parametrize("name,path,body,status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request(http: httpx.Client, name: str, path: str, body: Any, status: int) -> None:
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = http.post(path, json=body)
    error = assert_error(response, status)
    assert HINTS.get(name, "") in error["message"]


def test_unknown_get_route_and_method(http: httpx.Client) -> None:
    assert_error(http.get("/no/such/route"), 404)
    assert http.get("/generate").status_code == 405


def test_official_client_raises_on_bad_requests(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model="gpt-9", prompt="a")
    assert info.value.status_code == 400 and "gpt-9" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], temperature=-1)


def test_bad_request_mid_flight_does_not_disturb_others(http: httpx.Client, url: str) -> None:
    """A running request keeps its output while bad requests (also one reusing its rid) come and go."""
    ref = greedy(http, PROMPT, 480, ignore_eos=True)
    rid = f"busy-{uuid.uuid4().hex}"
    payload = {
        "text": PROMPT,
        "rid": rid,
        "stream": True,
        "sampling_params": {"max_new_tokens": 480, "temperature": 0, "ignore_eos": True},
    }
    with recording_client(base_url=url) as other, http.stream("POST", "/generate", json=payload) as response:
        events = sse_events(response.iter_lines())
        next(events)
        assert_error(other.post("/generate", json={"text": "a", "rid": rid}), 400)
        assert_error(other.post("/generate", json={"input_ids": [99999]}), 400)
        assert_error(other.post("/v1/completions", content=b"{", headers={"content-type": "application/json"}), 400)
        payloads = list(events)
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["text"] == ref["text"]


def test_disconnect_mid_stream_frees_the_pool(http: httpx.Client, url: str) -> None:
    assert http.post("/flush_cache").status_code == 200
    payload = {"text": PROMPT, "stream": True, "sampling_params": {"max_new_tokens": 480, "ignore_eos": True}}
    with recording_client(base_url=url) as client:
        with client.stream("POST", "/generate", json=payload) as response:
            events = sse_events(response.iter_lines())
            assert json.loads(next(events))["meta_info"]["finish_reason"] is None
            assert json.loads(next(events))["meta_info"]["finish_reason"] is None
        # leaving the block closes the connection mid-stream
    info = wait_idle(http, timeout=20.0)
    assert info["cached_tokens"] < 480  # aborted early: a finished request would have cached all its tokens


def test_disconnect_non_streaming_aborts(http: httpx.Client, url: str) -> None:
    params = {"max_new_tokens": 480, "ignore_eos": True}
    start = time.monotonic()
    native(http, {"text": [f"wave {i}" for i in range(8)], "sampling_params": params})
    one_wave = time.monotonic() - start  # 8 x ~483 tokens: about what the 4096-token KV pool holds at once
    payload = {"text": [f"batch {i}" for i in range(64)], "sampling_params": params}
    with recording_client(base_url=url) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/generate", json=payload, timeout=0.5)
    gone = time.monotonic()
    wait_idle(http, timeout=60.0)
    assert time.monotonic() - gone < 4 * one_wave  # running all 64 to the end would take ~8 waves


# -- load -------------------------------------------------------------------------------------------
def test_huge_prompt_is_tokenized_off_the_event_loop(http: httpx.Client, url: str, tiny_tokenizer: Any) -> None:
    """A 4 MB prompt takes seconds to tokenize (then gets a 400: longer than the context); the
    server does that on its preparation thread, so /health, sent while it runs, is answered
    long before the big request is, instead of queueing behind it on the event loop."""
    text = "The capital of France is Paris. " * 125_000
    start = time.monotonic()
    tiny_tokenizer.encode(text)
    encode_s = time.monotonic() - start  # about what the server spends on it
    done: dict[str, Any] = {}

    def post_big() -> None:
        with recording_client(base_url=url) as client:
            response = client.post("/generate", json={"text": text, "sampling_params": {"max_new_tokens": 1}})
        done["big"] = (time.monotonic(), response)

    worker = threading.Thread(target=post_big)
    worker.start()
    time.sleep(min(0.5, encode_s / 4))  # the body is up and being tokenized
    assert http.get("/health").status_code == 200
    health_done = time.monotonic()
    worker.join(timeout=120)
    big_done, response = done["big"]
    assert_error(response, 400)
    assert health_done < big_done - encode_s / 4, (health_done, big_done, encode_s)


def test_200_concurrent_streams_match_solo_runs(http: httpx.Client, url: str) -> None:
    prompts = [f"prompt {i}: the quick brown fox" if i % 2 else f"héllo {i} world" for i in range(20)]
    solo = {p: greedy(http, p, 8)["text"] for p in prompts}

    async def one(client: httpx.AsyncClient, prompt: str) -> str:
        payload = {"text": prompt, "stream": True, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        last = None
        async with client.stream("POST", "/generate", json=payload) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    last = json.loads(line[6:])
        assert last is not None and last["meta_info"]["finish_reason"] is not None
        return last["text"]

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
            return await asyncio.gather(*(one(client, prompts[i % 20]) for i in range(200)))

    texts = asyncio.run(run())
    assert texts == [solo[prompts[i % 20]] for i in range(200)]
    wait_idle(http)


# -- last: nothing above made the server fail -----------------------------------------------------------------
def test_no_internal_errors(server: tuple[str, Any], http: httpx.Client) -> None:
    assert greedy(http, PROMPT, 4)["meta_info"]["completion_tokens"] > 0  # still serving
    assert STATUSES and not [s for s in STATUSES if s >= 500]
    log = server_log(server[1])
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
