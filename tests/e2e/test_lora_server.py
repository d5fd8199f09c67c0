"""LoRA adapters over HTTP: native `/generate` `lora_path` (one name or one per prompt), OpenAI
`model: "<model>:<adapter>"` or the adapter's name, bad input answered with an OpenAI-style 400
naming the problem while the server keeps serving, and `POST /load_lora_adapter` /
`POST /unload_lora_adapter` while a request streams. Tokens are checked against HF + peft."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator

import httpx
import pytest

pytest.importorskip("peft")
pytestmark = pytest.mark.slow  # one server start plus HF + peft references

from helpers.server_client import assert_error, sse_events  # noqa: E402
from helpers.tiny_lora import NEW, PROMPTS, lora_references, make_adapter  # noqa: E402

MODEL = "tiny_llama"  # the served name: the model directory's base name
GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}
OAI_GREEDY = {"max_tokens": NEW, "temperature": 0, "ignore_eos": True}
LONG = 450  # tokens of the request that streams while adapters are loaded and unloaded
STATUSES: list[int] = []


@pytest.fixture(scope="module")
def setup(
    tiny_model: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory, server_factory: Any
) -> dict[str, Any]:
    """The server (A and B served, pool rank 8), the adapters' directories (C and bad ones for
    run-time loading) and the HF + peft references."""
    base = tiny_model("llama")
    out = tmp_path_factory.mktemp("lora_http")
    paths, refs = lora_references(base, out)
    bad_json = out / "bad_json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text('{"r": 4,')
    paths["r16"] = make_adapter(base, out / "r16", 16, ["q_proj"], 4)
    paths["head"] = make_adapter(base, out / "head", 2, ["lm_head"], 5)
    paths["bad_json"], paths["missing"] = str(bad_json), str(out / "missing")
    flags = ["--lora-paths", f"A={paths['A']}", f"B={paths['B']}", "--max-lora-rank", "8", "--dtype", "float32"]
    url, _proc = server_factory(base, *flags)
    return {"url": url, "paths": paths, "refs": refs}


@pytest.fixture(scope="module")
def http(setup: dict[str, Any]) -> Iterator[httpx.Client]:
    hooks = {"response": [lambda r: STATUSES.append(r.status_code)]}
    with httpx.Client(base_url=setup["url"], timeout=120.0, event_hooks=hooks) as client:
        yield client


def _generate(http: httpx.Client, ids: Any, lora: Any) -> Any:
    r = http.post("/generate", json={"input_ids": ids, "sampling_params": GREEDY, "lora_path": lora})
    assert r.status_code == 200, r.text
    return r.json()


def _completion(http: httpx.Client, **body: Any) -> str:
    r = http.post("/v1/completions", json={"prompt": PROMPTS[0], **OAI_GREEDY, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_generate_lora_path_per_prompt(http: httpx.Client, setup: dict[str, Any]) -> None:
    refs = setup["refs"]
    assert _generate(http, PROMPTS[1], "B")["output_ids"] == refs["B", 1]
    names, idx = ["A", None, "B", "A"], [0, 1, 0, 1]
    outs = _generate(http, [PROMPTS[i] for i in idx], names)
    assert [o["output_ids"] for o in outs] == [refs[n, i] for n, i in zip(names, idx)]


def test_openai_model_names_the_adapter(http: httpx.Client, setup: dict[str, Any]) -> None:
    refs = setup["refs"]
    assert refs["A", 0] != refs[None, 0]
    texts = {name: _generate(http, PROMPTS[0], name)["text"] for name in ("A", None)}
    assert _completion(http, model=f"{MODEL}:A") == texts["A"]
    assert _completion(http, model="A") == texts["A"]
    assert _completion(http, model="default", lora_path="A") == texts["A"]
    assert _completion(http, model=MODEL) == texts[None]
    chat = {"messages": [{"role": "user", "content": "hi"}], **OAI_GREEDY}
    by_model = [http.post("/v1/chat/completions", json={**chat, "model": m}) for m in (f"{MODEL}:B", "B", MODEL)]
    assert [r.status_code for r in by_model] == [200] * 3
    contents = [r.json()["choices"][0]["message"]["content"] for r in by_model]
    assert contents[0] == contents[1]


BAD_REQUESTS = [
    ("/generate", {"text": "a", "lora_path": "nope"}, "lora_path", "'nope' is not loaded"),
    ("/generate", {"text": ["a"], "lora_path": ["A", "B"]}, None, "2 values of lora_path for 1 prompts"),
    ("/generate", {"text": "a", "lora_path": 3}, None, ""),
    ("/v1/completions", {"model": f"{MODEL}:nope", "prompt": "a"}, "model", "'nope' is not loaded"),
    ("/v1/completions", {"model": "nope", "prompt": "a"}, "model", "'nope' is not served"),
    ("/v1/completions", {"model": "B", "lora_path": "A", "prompt": "a"}, "lora_path", "name different adapters"),
    ("/v1/chat/completions", {"model": "zz", "messages": [{"role": "user", "content": "a"}]}, "model", "'zz'"),
    ("/unload_lora_adapter", {"lora_name": "nope"}, "lora_name", "'nope' is not loaded"),
    ("/unload_lora_adapter", {}, None, "lora_name"),
    ("/load_lora_adapter", {"lora_name": "A", "lora_path": "{A}"}, "lora_name", "'A' is already loaded"),
    ("/load_lora_adapter", {"lora_name": "x", "lora_path": "{r16}"}, "lora_name", "rank 16 exceeds max_lora_rank 8"),
    ("/load_lora_adapter", {"lora_name": "x", "lora_path": "{head}"}, "lora_name", "'lm_head' not in"),
    ("/load_lora_adapter", {"lora_name": "x", "lora_path": "{bad_json}"}, "lora_name", "is not valid JSON"),
    ("/load_lora_adapter", {"lora_name": "x", "lora_path": "{missing}"}, "lora_name", "no adapter_config.json"),
    ("/load_lora_adapter", {"lora_name": "", "lora_path": "{A}"}, "lora_name", "non-empty"),
]


@pytest.mark.parametrize("path, body, param, words", BAD_REQUESTS, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_lora_input_is_a_400(
    http: httpx.Client, setup: dict[str, Any], path: str, body: dict, param: Any, words: str
) -> None:
    body = {k: v.format(**setup["paths"]) if k == "lora_path" and isinstance(v, str) else v for k, v in body.items()}
    error = assert_error(http.post(path, json=body), 400)
    assert words in error["message"]
    if param is not None:
        assert error["param"] == param
    assert _generate(http, PROMPTS[0], "A")["output_ids"] == setup["refs"]["A", 0]  # still serving


def _stream(http: httpx.Client, body: dict, chunks: list[dict], started: threading.Event) -> None:
    with http.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        for data in sse_events(r.iter_lines()):
            if data != "[DONE]":
                chunks.append(json.loads(data))
                started.set()


def test_load_and_unload_while_a_request_streams(http: httpx.Client, setup: dict[str, Any]) -> None:
    paths, refs = setup["paths"], setup["refs"]
    long_body = {"input_ids": PROMPTS[0], "lora_path": "A", "stream": True}
    long_body["sampling_params"] = {**GREEDY, "max_new_tokens": LONG}
    chunks: list[dict] = []
    started = threading.Event()
    streamer = threading.Thread(target=_stream, args=(http, long_body, chunks, started))
    streamer.start()
    try:
        assert started.wait(60)
        r = http.post("/load_lora_adapter", json={"lora_name": "C", "lora_path": paths["C"]})
        assert r.status_code == 200 and set(r.json()["loaded_adapters"]) == {"A", "B", "C"}, r.text
        assert _generate(http, PROMPTS[0], "C")["output_ids"] == refs["C", 0]
        error = assert_error(http.post("/unload_lora_adapter", json={"lora_name": "A"}), 400)
        assert "'A' is in use by 1 request" in error["message"]
    finally:
        streamer.join(120)
    ids = chunks[-1]["output_ids"]  # SGLang's native stream: each chunk holds every token so far
    assert len(ids) == LONG and ids[:NEW] == refs["A", 0]
    r = http.post("/unload_lora_adapter", json={"lora_name": "A"})
    assert r.status_code == 200 and set(r.json()["loaded_adapters"]) == {"B", "C"}
    assert_error(http.post("/generate", json={"input_ids": PROMPTS[0], "lora_path": "A"}), 400)
    assert _completion(http, model="C") == _generate(http, PROMPTS[0], "C")["text"]
    r = http.post("/load_lora_adapter", json={"lora_name": "A", "lora_path": paths["A"]})
    assert r.status_code == 200 and _generate(http, PROMPTS[0], "A")["output_ids"] == refs["A", 0]


def test_no_server_errors() -> None:
    assert STATUSES and not [s for s in STATUSES if s >= 500]
