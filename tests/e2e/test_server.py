"""The HTTP server end to end: a real `radixlm.entrypoints.launch` subprocess serving the tiny Llama,
driven by the official `openai` client, httpx and curl."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
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
    render_chat,
    sse_events,
    wait_idle,
)
from helpers.server_utils import launch_server, server_log, stop


# -- OpenAI API with the official client ----------------------------------------------------------
def test_models_list_and_retrieve(oai: openai.OpenAI, http: httpx.Client) -> None:
    assert [m.id for m in oai.models.list().data] == [MODEL]
    card = oai.models.retrieve(MODEL)
    assert card.id == MODEL and card.object == "model"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")
    body = http.get("/v1/models/no-such-model").json()
    assert body["error"]["code"] == 404 and "no-such-model" in body["error"]["message"]


def test_completion_usage_matches_tokenizer_and_native(
    oai: openai.OpenAI, http: httpx.Client, tiny_tokenizer: Any
) -> None:
    out = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    ref = greedy(http, PROMPT, 8)
    assert out.choices[0].text == ref["text"]
    assert out.usage.prompt_tokens == len(tiny_tokenizer.encode(PROMPT)) == ref["meta_info"]["prompt_tokens"]
    assert out.usage.completion_tokens == len(ref["output_ids"]) > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.choices[0].finish_reason in ("stop", "length")


def test_completion_n2_and_echo(oai: openai.OpenAI, tiny_tokenizer: Any) -> None:
    out = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, n=2, echo=True, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in out.choices] == [0, 1]
    assert all(c.text.startswith(PROMPT) and len(c.text) > len(PROMPT) for c in out.choices)
    assert out.choices[0].text == out.choices[1].text  # greedy samples agree
    assert out.usage.prompt_tokens == len(tiny_tokenizer.encode(PROMPT))  # one prompt, counted once
    assert out.usage.completion_tokens == 10


def test_completion_logprobs(oai: openai.OpenAI) -> None:
    out = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3, extra_body={"ignore_eos": True}
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens == 6
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3 and all(v <= 0 for v in top.values())
        assert max(top.values()) == pytest.approx(chosen, abs=1e-4)  # greedy picks the best token


def test_completion_stop_string(oai: openai.OpenAI, http: httpx.Client) -> None:
    full = (
        oai.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    stop = next(
        full[p : p + 2] for p in range(1, len(full) - 1) if full[p : p + 2].isascii() and full[p : p + 2].isalnum()
    )
    out = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop], extra_body={"ignore_eos": True}
    )
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    raw = http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stop": stop, "ignore_eos": True},
    ).json()
    assert raw["choices"][0]["matched_stop"] == stop


def test_prefix_reuse_reports_cached_tokens(oai: openai.OpenAI, http: httpx.Client) -> None:
    assert http.post("/flush_cache").status_code == 200
    prompt = "hello world, the quick brown fox jumps over the lazy dog. " * 3
    first = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    second = oai.completions.create(model=MODEL, prompt=prompt + "STOP", max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens // 2 < cached < second.usage.prompt_tokens


def test_chat_usage_counts_the_rendered_template(oai: openai.OpenAI, http: httpx.Client, tiny_tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital?"}]
    out = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    ids = render_chat(tiny_tokenizer, messages)
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    counted = http.post("/tokenize", json={"text": text, "add_special_tokens": False}).json()["count"]
    assert out.usage.prompt_tokens == len(ids) == counted
    ref = native(http, {"input_ids": ids, "sampling_params": {"max_new_tokens": 8, "temperature": 0}})
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref["text"]
    assert out.usage.completion_tokens == len(ref["output_ids"])


def test_chat_logprobs(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)


def test_chat_stream_roles_finish_reasons_usage(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me about Paris."}]
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=6,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    seen: dict[int, list] = {0: [], 1: []}
    for chunk in chunks[:-1]:
        assert chunk.usage is None and len(chunk.choices) == 1
        seen[chunk.choices[0].index].append(chunk.choices[0])
    for choices in seen.values():
        assert choices[0].delta.role == "assistant"
        assert [c.finish_reason for c in choices if c.finish_reason] == [choices[-1].finish_reason]
    texts = ["".join(c.delta.content or "" for c in seen[i]) for i in (0, 1)]
    whole = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert texts == [whole.choices[0].message.content] * 2
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2 * whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_async_client_streams(url: str, oai: openai.OpenAI) -> None:
    async def run() -> tuple[str, str, Any]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        async with client:
            parts, usage = [], None
            stream = await client.completions.create(
                model=MODEL,
                prompt=PROMPT,
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                parts += [c.text for c in chunk.choices]
                usage = chunk.usage or usage
            chat = await client.chat.completions.create(
                model=MODEL, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "hi"}]
            )
            return "".join(parts), chat.choices[0].message.content, usage

    text, chat_text, usage = asyncio.run(run())
    assert text == oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    assert usage is not None and usage.completion_tokens > 0
    assert (
        chat_text
        == oai.chat.completions.create(
            model=MODEL, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "hi"}]
        )
        .choices[0]
        .message.content
    )


# -- native API --------------------------------------------------------------------------------------
def test_generate_text_batch_and_input_ids(http: httpx.Client, tiny_tokenizer: Any) -> None:
    one = greedy(http, PROMPT, 8)
    assert one["meta_info"]["prompt_tokens"] == len(tiny_tokenizer.encode(PROMPT))
    assert one["meta_info"]["completion_tokens"] == len(one["output_ids"]) > 0
    other = greedy(http, "hello world", 8)
    batch = native(http, {"text": [PROMPT, "hello world"], "sampling_params": {"max_new_tokens": 8, "temperature": 0}})
    assert [b["text"] for b in batch] == [one["text"], other["text"]]
    by_ids = native(
        http, {"input_ids": tiny_tokenizer.encode(PROMPT), "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    )
    assert by_ids["output_ids"] == one["output_ids"]
    per_prompt = native(
        http,
        {
            "text": ["a", "b"],
            "sampling_params": [{"max_new_tokens": 2, "ignore_eos": True}, {"max_new_tokens": 4, "ignore_eos": True}],
        },
    )
    assert [len(r["output_ids"]) for r in per_prompt] == [2, 4]
    assert [r["meta_info"]["finish_reason"]["type"] for r in per_prompt] == ["length", "length"]


def test_generate_logprobs(http: httpx.Client) -> None:
    out = native(
        http,
        {
            "text": PROMPT,
            "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True},
            "return_logprob": True,
            "top_logprobs_num": 3,
            "return_text_in_logprobs": True,
        },
    )
    meta = out["meta_info"]
    assert len(meta["output_token_logprobs"]) == len(meta["output_top_logprobs"]) == len(out["output_ids"]) == 5
    for (lp, token, text), top, chosen in zip(
        meta["output_token_logprobs"], meta["output_top_logprobs"], out["output_ids"]
    ):
        assert token == chosen and lp <= 0 and isinstance(text, str)
        assert len(top) == 3 and top[0][1] == chosen and top[0][0] == pytest.approx(lp, abs=1e-4)


def test_generate_stream_is_cumulative(http: httpx.Client) -> None:
    whole = greedy(http, PROMPT, 8, ignore_eos=True)
    payload = {
        "text": PROMPT,
        "stream": True,
        "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
    }
    with http.stream("POST", "/generate", json=payload) as response:
        assert response.status_code == 200
        events = list(sse_events(response.iter_lines()))
    assert events[-1] == "[DONE]"
    outs = [json.loads(e) for e in events[:-1]]
    assert len(outs) >= 2
    for prev, cur in zip(outs, outs[1:]):
        assert cur["text"].startswith(prev["text"].rstrip("\ufffd"))
        assert cur["output_ids"][: len(prev["output_ids"])] == prev["output_ids"]
    assert outs[-1]["text"] == whole["text"] and outs[-1]["output_ids"] == whole["output_ids"]
    assert [o["meta_info"]["finish_reason"] is not None for o in outs].count(True) == 1


def test_control_routes(http: httpx.Client, tiny_tokenizer: Any, tiny_llama_dir: str) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200
    info = http.get("/get_model_info").json()
    assert info["model_path"] == tiny_llama_dir and info["is_generation"] and info["served_model_name"] == MODEL
    server = http.get("/get_server_info").json()
    assert server["max_total_num_tokens"] == 4096 and 0 < server["available_kv_tokens"] <= 4096
    assert "api_key" not in server
    assert http.post("/flush_cache").status_code == 200
    assert http.get("/get_server_info").json()["available_kv_tokens"] == 4096  # flushed and idle
    tok = http.post("/tokenize", json={"text": PROMPT}).json()
    assert tok["tokens"] == tiny_tokenizer.encode(PROMPT) and tok["count"] == len(tok["tokens"])
    assert tok["max_model_len"] == 512
    ids = tiny_tokenizer.encode("héllo 世界", add_special_tokens=False)
    assert http.post("/detokenize", json={"tokens": ids}).json()["text"] == "héllo 世界"


def test_metrics(http: httpx.Client) -> None:
    before = _metric(http, "radixlm_num_requests_total")
    greedy(http, PROMPT, 2)
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert _metric(http, "radixlm_num_requests_total") == before + 1
    for name in (
        "radixlm_generation_tokens_total",
        "radixlm_time_to_first_token_seconds_count",
        "radixlm_num_running_reqs",
        "radixlm_token_usage",
    ):
        assert re.search(rf"^{name} ", response.text, re.M), name


def _metric(http: httpx.Client, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", http.get("/metrics").text, re.M)
    assert match, name
    return float(match.group(1))


def test_abort_request_ends_the_stream(http: httpx.Client, url: str) -> None:
    rid = f"abort-{uuid.uuid4().hex}"
    payload = {
        "text": PROMPT,
        "rid": rid,
        "stream": True,
        "sampling_params": {"max_new_tokens": 480, "ignore_eos": True},
    }
    with recording_client(base_url=url) as other, http.stream("POST", "/generate", json=payload) as response:
        events = sse_events(response.iter_lines())
        first = [json.loads(next(events)) for _ in range(2)]
        assert all(e["meta_info"]["finish_reason"] is None for e in first)
        assert other.post("/abort_request", json={"rid": rid}).status_code == 200
        rest = list(events)
    assert rest[-1] == "[DONE]"
    last = json.loads(rest[-2])
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(last["output_ids"]) < 480
    wait_idle(http)


# -- README examples -----------------------------------------------------------------------------------
def _readme_block(marker: str) -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|python)\n(.*?)```", readme, re.S)
    return next(b for b in blocks if marker in b)


def test_readme_curl_example(url: str, tiny_tokenizer: Any) -> None:
    block = _readme_block("curl http://127.0.0.1:30000/generate")
    command = block[block.index("curl") :].replace("http://127.0.0.1:30000", url)
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)["meta_info"]
    assert meta["prompt_tokens"] == len(tiny_tokenizer.encode(PROMPT)) and 0 < meta["completion_tokens"] <= 16
    assert meta["finish_reason"]["type"] in ("stop", "length")


def test_readme_openai_example(url: str, oai: openai.OpenAI) -> None:
    code = _readme_block("OpenAI(").replace("http://127.0.0.1:30000", url)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    expected = (
        oai.chat.completions.create(
            model="default",
            max_tokens=32,
            temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        .choices[0]
        .message.content
    )
    assert printed.getvalue() == expected + "\n"


# -- auth and payload size: a second server -----------------------------------------------------------------
def test_api_key_and_payload_size(tiny_llama_dir: str) -> None:
    url, proc = launch_server(tiny_llama_dir, "--api-key", "sk-test", "--max-payload-size", "100000")
    try:
        _check_auth(url)
    finally:
        stop(proc)


def _check_auth(url: str) -> None:
    key = {"Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=url, timeout=60.0) as http:
        assert http.get("/health").status_code == 200
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", "/get_server_info"),
            ("GET", "/metrics"),
            ("POST", "/generate"),
            ("POST", "/v1/completions"),
            ("POST", "/flush_cache"),
            ("GET", "/health_generate"),
            ("GET", "/nowhere"),
        ]:
            assert_error(http.request(method, path, json={"text": "a"}), 401)
            assert_error(http.request(method, path, json={"text": "a"}, headers={"Authorization": "Bearer nope"}), 401)
        assert http.get("/v1/models", headers=key).status_code == 200
        assert http.get("/v1/models", headers={"x-api-key": "sk-test"}).status_code == 200
        good = {"text": "a", "sampling_params": {"max_new_tokens": 2}}
        assert http.post("/generate", json=good, headers=key).status_code == 200
        big = {"text": "a" * 150_000, "sampling_params": {"max_new_tokens": 2}}
        assert_error(http.post("/generate", json=big, headers=key), 413)
        chunked = iter([json.dumps(big).encode()[i : i + 30_000] for i in range(0, 150_100, 30_000)])
        assert_error(http.post("/generate", content=chunked, headers={**key, "content-type": "application/json"}), 413)
        assert http.post("/generate", json=good, headers=key).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test").models.list().data[0].id == MODEL


# -- last: nothing above made the server fail -----------------------------------------------------------------
def test_no_internal_errors(server: tuple[str, Any], http: httpx.Client) -> None:
    assert greedy(http, PROMPT, 4)["meta_info"]["completion_tokens"] > 0  # still serving
    assert STATUSES and not [s for s in STATUSES if s >= 500]
    log = server_log(server[1])
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
