"""SGLang 0.5's client contract on the shared server: /model_info and /server_info (the /get_*
names kept), a tokenizer_path a client can load, and cached-token details on the native route
(`meta_info.cached_tokens_details`) and the OpenAI routes (`sglext`, when asked)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from helpers.server_client import PROMPT, native, sse_events

LONG_PROMPT = PROMPT + " and the capital of Italy is Rome, while the capital of Spain is"


def _flush(http: httpx.Client) -> None:
    assert http.post("/flush_cache").status_code == 200


def test_model_info_and_server_info_under_both_names(http: httpx.Client, tiny_llama_dir: str) -> None:
    new, old = http.get("/model_info").json(), http.get("/get_model_info").json()
    assert new == old
    assert new["model_path"] == tiny_llama_dir and new["tokenizer_path"] == tiny_llama_dir
    assert new["model_type"] == "llama" and new["is_generation"] is True
    info = http.get("/server_info").json()
    assert info.keys() == http.get("/get_server_info").json().keys()
    assert info["tokenizer_path"] == tiny_llama_dir and "api_key" not in info
    assert isinstance(info["internal_states"], list) and "num_running_reqs" in info["internal_states"][0]


def test_reported_tokenizer_path_loads(http: httpx.Client, tiny_tokenizer: Any) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(http.get("/model_info").json()["tokenizer_path"])
    assert tokenizer.encode(PROMPT) == tiny_tokenizer.encode(PROMPT)


def test_native_meta_info_has_cached_tokens_details(http: httpx.Client) -> None:
    _flush(http)
    payload = {"text": LONG_PROMPT, "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
    cold = native(http, payload)["meta_info"]
    assert cold["cached_tokens"] == 0 and "cached_tokens_details" not in cold
    warm = native(http, payload)["meta_info"]
    assert warm["cached_tokens"] > 0
    assert warm["cached_tokens_details"] == {"device": warm["cached_tokens"], "host": 0}


def test_completions_sglext_when_asked(http: httpx.Client) -> None:
    _flush(http)
    body = {"model": "default", "prompt": LONG_PROMPT, "max_tokens": 2, "temperature": 0}
    http.post("/v1/completions", json=body)
    plain = http.post("/v1/completions", json=body).json()
    assert "sglext" not in plain and plain["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    asked = http.post("/v1/completions", json={**body, "return_cached_tokens_details": True}).json()
    cached = asked["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert asked["sglext"] == {"cached_tokens_details": {"device": cached, "host": 0}}


def _stream_chunks(http: httpx.Client, route: str, body: dict) -> list[dict]:
    with http.stream("POST", route, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        return [json.loads(e) for e in sse_events(response.iter_lines()) if e != "[DONE]"]


def test_streams_carry_sglext_on_the_finishing_chunk(http: httpx.Client) -> None:
    """On a chunk that still has its choice: SGLang's bench client reads choices[0] of every chunk."""
    body = {"model": "default", "max_tokens": 3, "temperature": 0, "return_cached_tokens_details": True}
    routes = [
        ("/v1/completions", {**body, "prompt": LONG_PROMPT}),
        ("/v1/chat/completions", {**body, "messages": [{"role": "user", "content": LONG_PROMPT}]}),
    ]
    for route, request in routes:
        _flush(http)
        cold = _stream_chunks(http, route, request)
        assert not any("sglext" in c for c in cold), route  # nothing cached: SGLang sends none either
        warm = _stream_chunks(http, route, request)
        with_ext = [c for c in warm if "sglext" in c]
        assert len(with_ext) == 1, route
        assert with_ext[0]["choices"] and with_ext[0]["choices"][0]["finish_reason"] is not None
        assert with_ext[0]["sglext"]["cached_tokens_details"]["device"] > 0
