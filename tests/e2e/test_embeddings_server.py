"""The embedding routes over HTTP: the official `openai` client's `embeddings.create` (string and
list inputs, base64 as the client asks by default, float) and SGLang's `/encode` against an
--is-embedding server (last-token pooling, chunked prefill), vectors checked against HF; 400s
naming each mismatch, on the embedding server and on the shared generation server."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import httpx
import pytest
from helpers.server_client import STATUSES, assert_error, recording_client
from helpers.tiny_embedding import hf_embeddings, make_embedding_model
from helpers.tiny_models import load_hf_model

TOL = 1e-5


@pytest.fixture(scope="module")
def emb_url(tiny_model: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory, server_factory: Any) -> str:
    path = make_embedding_model(tiny_model("qwen3"), tmp_path_factory.mktemp("emb_server") / "emb", "last", True)
    url, _ = server_factory(path, "--is-embedding", "--dtype", "float32", "--chunked-prefill-size", "8")
    return url


@pytest.fixture(scope="module")
def emb_http(emb_url: str) -> Iterator[httpx.Client]:
    with recording_client(base_url=emb_url) as client:
        yield client


@pytest.fixture(scope="module")
def emb_oai(emb_url: str) -> Iterator[Any]:
    import openai

    with recording_client() as transport:
        yield openai.OpenAI(base_url=f"{emb_url}/v1", api_key="x", http_client=transport, max_retries=0)


@pytest.fixture(scope="module")
def reference(tiny_model: Callable[[str], str], tiny_tokenizer: Any) -> Callable[[list[str]], list[list[float]]]:
    hf = load_hf_model(tiny_model("qwen3"))
    return lambda texts: hf_embeddings(hf, [tiny_tokenizer.encode(t) for t in texts], "last", True)


def _max_err(got: list[list[float]], ref: list[list[float]]) -> float:
    assert [len(g) for g in got] == [len(r) for r in ref]
    return max(abs(a - b) for g, r in zip(got, ref) for a, b in zip(g, r))


def test_openai_client_string_and_list(emb_oai: Any, reference: Callable, tiny_tokenizer: Any) -> None:
    texts = ["a longer sentence that takes several prefill chunks to embed", "short"]
    one = emb_oai.embeddings.create(model="default", input=texts[0])  # the client asks for base64
    assert len(one.data) == 1 and one.usage.prompt_tokens == len(tiny_tokenizer.encode(texts[0]))
    assert _max_err([one.data[0].embedding], reference(texts[:1])) < TOL
    both = emb_oai.embeddings.create(model="default", input=texts, encoding_format="float")
    assert [d.index for d in both.data] == [0, 1]
    assert _max_err([d.embedding for d in both.data], reference(texts)) < TOL
    assert both.usage.prompt_tokens == both.usage.total_tokens == sum(len(tiny_tokenizer.encode(t)) for t in texts)


def test_token_id_inputs_and_native_encode(emb_http: httpx.Client, reference: Callable, tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode("token ids in")
    flat = emb_http.post("/v1/embeddings", json={"input": ids}).json()
    nested = emb_http.post("/v1/embeddings", json={"input": [ids, ids[:2]]}).json()
    ref = reference(["token ids in"])
    assert _max_err([flat["data"][0]["embedding"], nested["data"][0]["embedding"]], ref * 2) < TOL
    assert nested["usage"]["prompt_tokens"] == len(ids) + 2
    single = emb_http.post("/encode", json={"text": "token ids in"}).json()
    assert _max_err([single["embedding"]], ref) < TOL and single["meta_info"]["prompt_tokens"] == len(ids)
    batch = emb_http.post("/encode", json={"input_ids": [ids, ids]}).json()
    assert len(batch) == 2 and batch[1]["meta_info"]["cached_tokens"] == len(ids) - 1  # a radix-cache hit
    assert _max_err([b["embedding"] for b in batch], ref * 2) < TOL


def test_mismatches_and_unsupported_fields_are_400(emb_http: httpx.Client, http: httpx.Client) -> None:
    err = assert_error(emb_http.post("/v1/embeddings", json={"input": "x", "dimensions": 8}), 400)
    assert err["param"] == "dimensions" and "Matryoshka" in err["message"]
    assert assert_error(emb_http.post("/v1/embeddings", json={"input": "x", "foo": 1}), 400)["param"] == "foo"
    bad_format = emb_http.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"})
    assert assert_error(bad_format, 400)["param"] == "encoding_format"
    assert assert_error(emb_http.post("/v1/embeddings", json={"input": []}), 400)["param"] == "input"
    for route, body in [
        ("/generate", {"text": "x"}),
        ("/v1/completions", {"model": "default", "prompt": "x"}),
        ("/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": "x"}]}),
    ]:
        assert "embedding model" in assert_error(emb_http.post(route, json=body), 400)["message"]
    assert emb_http.get("/model_info").json()["is_generation"] is False
    assert emb_http.get("/health_generate").status_code == 200
    for route in ("/v1/embeddings", "/encode"):  # the shared generation server
        body = {"input": "x"} if route == "/v1/embeddings" else {"text": "x"}
        assert "--is-embedding" in assert_error(http.post(route, json=body), 400)["message"]


def test_no_server_error() -> None:
    assert STATUSES and not [s for s in STATUSES if s >= 500]
