"""No silent drops: each request field the server does not implement is a 400 that names it;
the few OpenAI fields that are no-ops in OpenAI's own API are accepted (README lists both)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
COMPLETION = {"model": "default", "prompt": "hi", "max_tokens": 1}
GENERATE = {"text": "hi", "sampling_params": {"max_new_tokens": 1}}

UNSUPPORTED = [
    ("/v1/chat/completions", CHAT, "audio", {"voice": "alloy", "format": "wav"}),
    ("/v1/chat/completions", CHAT, "modalities", ["text", "audio"]),
    ("/v1/chat/completions", CHAT, "prediction", {"type": "content", "content": "x"}),
    ("/v1/chat/completions", CHAT, "reasoning_effort", "low"),
    ("/v1/chat/completions", CHAT, "verbosity", "low"),
    ("/v1/chat/completions", CHAT, "web_search_options", {}),
    ("/v1/chat/completions", CHAT, "functions", [{"name": "f"}]),
    ("/v1/chat/completions", CHAT, "function_call", "auto"),
    ("/v1/chat/completions", CHAT, "store", True),
    ("/v1/chat/completions", CHAT, "return_hidden_states", True),
    ("/v1/completions", COMPLETION, "suffix", " world"),
    ("/v1/completions", COMPLETION, "best_of", 2),
    ("/v1/completions", COMPLETION, "no_such_field", 1),
    ("/generate", GENERATE, "return_hidden_states", True),
    ("/generate", GENERATE, "custom_logit_processor", "x"),
    ("/generate", GENERATE, "session_params", {"id": "s"}),
    ("/generate", GENERATE, "return_routed_experts", True),
    ("/v1/chat/completions", CHAT, "stream_reasoning", False),  # on by default in SGLang: false asks something
]


@pytest.mark.parametrize("path, base, field, value", UNSUPPORTED, ids=lambda v: v if isinstance(v, str) else "")
def test_unimplemented_field_is_a_400_naming_it(
    http: httpx.Client, path: str, base: dict, field: str, value: Any
) -> None:
    r = http.post(path, json={**base, field: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"]


@pytest.mark.parametrize(
    "path, base", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION), ("/generate", GENERATE)]
)
def test_lora_path_without_adapters_is_a_400_naming_it(http: httpx.Client, path: str, base: dict) -> None:
    """This server serves no LoRA adapters (--lora-paths): an adapter request is refused, never run on the base."""
    r = http.post(path, json={**base, "lora_path": "my-adapter"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (
        error["param"] == "lora_path"
        and "'my-adapter'" in error["message"]
        and "serves no adapters" in error["message"]
    )


def test_unsupported_message_field(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "hi", "audio": {"id": "a"}}]
    r = http.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].audio"


@pytest.mark.parametrize(
    "path, base, extra",
    [
        ("/v1/chat/completions", CHAT, {"user": "u1", "metadata": {"k": "v"}, "service_tier": "auto", "store": False}),
        ("/v1/chat/completions", CHAT, {"safety_identifier": "s", "prompt_cache_key": "k", "modalities": ["text"]}),
        ("/v1/chat/completions", CHAT, {"lora_path": None, "reasoning_effort": None, "function_call": None}),
        ("/v1/completions", COMPLETION, {"user": "u1", "best_of": 1, "suffix": None}),
        ("/generate", GENERATE, {"lora_path": None, "return_routed_experts": False, "return_hidden_states": False}),
    ],
)
def test_documented_noops_and_nulls_are_accepted(http: httpx.Client, path: str, base: dict, extra: dict) -> None:
    r = http.post(path, json={**base, **extra})
    assert r.status_code == 200, r.text


def test_official_client_sees_the_named_field(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model="default", prompt="hi", max_tokens=1, suffix="!")
    assert "suffix" in str(info.value)
