"""Bad input: property-based fuzz of the live HTTP API from its OpenAPI schema
(schemathesis, valid and invalid bodies) and of sampling parameters (hypothesis), plus the named
nasty cases. Nothing may answer 5xx; every rejection is an OpenAI-style 4xx body."""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import httpx
import pytest
import schemathesis
from helpers.server_utils import launch_server, server_log, stop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

CONTEXT = 64  # a short context bounds what any accepted request can cost
FUZZ_SETTINGS = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


def fuzz_settings(max_examples: int) -> settings:
    return settings(FUZZ_SETTINGS, max_examples=max_examples)


@pytest.fixture(scope="module")
def server(tiny_llama_dir: str) -> Iterator[tuple[str, Any]]:
    base, proc = launch_server(tiny_llama_dir, "--context-length", str(CONTEXT))
    yield base, proc
    stop(proc)
    log = server_log(proc)
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


@pytest.fixture(scope="module")
def http(server: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=60.0) as client:
        yield client


def check_answer(status: int, body: bytes, what: str) -> None:
    """No 5xx; a 4xx carries {"error": {"message", "type", "param", "code"}}."""
    assert status < 500, f"{what}: HTTP {status} {body[:300]!r}"
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"], what
        assert isinstance(error["type"], str) and error["code"] == status and "param" in error, what


def post_raw(http: httpx.Client, path: str, content: bytes) -> httpx.Response:
    return http.post(path, content=content, headers={"content-type": "application/json"})


def nested_schema(depth: int) -> str:
    return '{"type": "array", "items": ' * depth + "{}" + "}" * depth


GEN = "/generate"
CASES: list[tuple[str, str, Any, bool]] = [  # name, path, body (bytes are sent as is), must be rejected
    ("malformed-json", GEN, b'{"text": "a", ', True),
    ("not-json", "/v1/chat/completions", b"\x00\x01binary", True),
    ("invalid-utf8-bytes", GEN, b'{"text": "a\xff\xfe"}', True),
    ("lone-surrogate", GEN, b'{"text": "a\\ud800"}', True),
    ("lone-surrogate-chat", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', True),
    ("deep-json-body", GEN, b'{"text": "a", "sampling_params": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", True),
    ("wrong-type-text", GEN, {"text": 5}, True),
    ("wrong-type-params", GEN, {"text": "a", "sampling_params": "hot"}, True),
    ("wrong-type-messages", "/v1/chat/completions", {"messages": "hi"}, True),
    ("nan-temperature", GEN, b'{"text": "a", "sampling_params": {"temperature": NaN}}', True),
    ("inf-top-p", "/v1/completions", b'{"prompt": "a", "top_p": Infinity}', True),
    (
        "neg-inf-penalty",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "a"}], "presence_penalty": -Infinity}',
        True,
    ),
    ("negative-max-tokens", "/v1/completions", {"prompt": "a", "max_tokens": -1}, True),
    ("negative-n", GEN, {"text": "a", "sampling_params": {"n": -3}}, True),
    ("empty-prompt", "/v1/completions", {"prompt": ""}, True),
    ("empty-text", GEN, {"text": ""}, True),
    ("empty-ids", GEN, {"input_ids": []}, True),
    ("huge-prompt", GEN, {"text": "hello " * 200_000, "sampling_params": {"max_new_tokens": 1}}, True),
    ("ids-out-of-vocab", GEN, {"input_ids": [3, 10**12]}, True),
    ("ids-negative", "/v1/completions", {"prompt": [-1, 5]}, True),
    ("huge-n-native", GEN, {"text": "a", "sampling_params": {"n": 10**9}}, True),
    ("huge-n-openai", "/v1/completions", {"prompt": "a", "n": 10**9}, True),
    (
        "huge-max-tokens",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "a"}], "max_tokens": 10**15},
        True,
    ),
    (
        "huge-top-logprobs",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "a"}], "logprobs": True, "top_logprobs": 10**6},
        True,
    ),
    ("deep-schema", GEN, {"text": "a", "sampling_params": {"json_schema": nested_schema(3000)}}, True),
    (
        "deep-schema-object",
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "a"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": json.loads(nested_schema(600))},
            },
        },
        True,
    ),
    ("invalid-schema", GEN, {"text": "a", "sampling_params": {"json_schema": '{"type": 5}'}}, True),
    ("schema-not-json", GEN, {"text": "a", "sampling_params": {"json_schema": "{oops"}}, True),
    ("deep-regex", GEN, {"text": "a", "sampling_params": {"regex": "(" * 5000 + "a" + ")" * 5000}}, True),
    ("huge-counted-regex", GEN, {"text": "a", "sampling_params": {"regex": "(a{1,1000}){1,1000}"}}, True),
    ("invalid-regex", GEN, {"text": "a", "sampling_params": {"regex": "(a"}}, True),
    ("huge-stop", GEN, {"text": "a", "sampling_params": {"stop": ["x" * 100_000]}}, True),
    ("two-constraints", GEN, {"text": "a", "sampling_params": {"regex": "a", "ebnf": 'root ::= "a"'}}, True),
    (
        "image-to-text-model",
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ]
        },
        True,
    ),
    # Valid but nasty: must be served (or refused) quickly, never crash.
    ("catastrophic-regex", GEN, {"text": "a", "sampling_params": {"regex": "(a+)+$", "max_new_tokens": 8}}, False),
    ("catastrophic-regex-2", GEN, {"text": "a", "sampling_params": {"regex": "(a|aa)*b", "max_new_tokens": 8}}, False),
    ("nested-star-regex", GEN, {"text": "a", "sampling_params": {"regex": "((a*)*)*$", "max_new_tokens": 8}}, False),
    (
        "moderately-deep-schema",
        GEN,
        {"text": "a", "sampling_params": {"json_schema": nested_schema(40), "max_new_tokens": 8}},
        False,
    ),
    (
        "huge-logprob-start",
        GEN,
        {"text": "a", "return_logprob": True, "logprob_start_len": 10**9, "sampling_params": {"max_new_tokens": 1}},
        False,
    ),
    (
        "huge-top-logprobs-native",
        GEN,
        {"text": "a", "return_logprob": True, "top_logprobs_num": 10**9, "sampling_params": {"max_new_tokens": 1}},
        False,
    ),
]


@pytest.mark.parametrize("name,path,body,rejected", CASES, ids=[c[0] for c in CASES])
def test_named_bad_input(http: httpx.Client, name: str, path: str, body: Any, rejected: bool) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = post_raw(http, path, content)
    check_answer(response.status_code, response.content, name)
    if rejected:
        assert 400 <= response.status_code < 500, (name, response.text[:300])


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]),
    st.text(max_size=12),
    st.lists(st.integers(-5, 500), max_size=4),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=3),
)
FIELDS = [
    "max_new_tokens",
    "min_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "n",
    "seed",
    "logit_bias",
    "regex",
    "json_schema",
    "ebnf",
    "skip_special_tokens",
    "no_stop_trim",
    "bogus",
]
SAMPLING = st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, max_size=5).map(lambda d: {"max_new_tokens": 4, **d})


@fuzz_settings(60)
@given(params=SAMPLING, api=st.sampled_from(["generate", "completions"]))
def test_fuzzed_sampling_params_never_5xx(http: httpx.Client, params: dict, api: str) -> None:
    if api == "generate":
        path, body = "/generate", {"text": "hello", "sampling_params": params}
    else:
        renamed = {("max_tokens" if k == "max_new_tokens" else k): v for k, v in params.items()}
        path, body = "/v1/completions", {"prompt": "hello", **renamed}
    response = post_raw(http, path, json.dumps(body, allow_nan=True).encode())
    check_answer(response.status_code, response.content, f"{path} {body}")


SKIP_OPERATIONS = {"GET /docs", "GET /redoc", "GET /docs/oauth2-redirect", "GET /openapi.json"}


def test_openapi_schema_fuzz_never_5xx(server: tuple[str, Any]) -> None:
    """Every operation of /openapi.json, valid (positive) and invalid (negative) generated calls."""
    url = server[0]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {"/generate", "/v1/completions", "/v1/chat/completions"} <= {op.path for op in operations}
    calls = 0
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += _fuzz_operation(url, op, mode)
    assert calls >= 50  # every operation, both modes, answered


def _fuzz_operation(url: str, operation: Any, mode: GenerationMode) -> int:
    seen = [0]

    @fuzz_settings(6)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=url, timeout=60)
        seen[0] += 1
        check_answer(response.status_code, response.content, f"{mode.name} {operation.label}: {case.body!r:.300}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
        assert mode is GenerationMode.NEGATIVE
    return seen[0]
