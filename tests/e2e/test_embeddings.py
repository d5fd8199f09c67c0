"""Embedding mode (--is-embedding) on a tiny Qwen3 with sentence-transformers pooling configs:
vectors equal HF transformers' final hidden states + the same pooling (float32, within 1e-5)
for last-token / mean / CLS pooling, single and batched, with and without a radix-cache hit,
under chunked prefill; the mismatches (generation on an embedding server, embeddings on a
generation server, `dimensions` on a non-Matryoshka model) are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers.tiny_embedding import hf_embeddings, make_base_model_checkpoint, make_embedding_model
from helpers.tiny_models import load_hf_model

TOL = 1e-5
CHUNK = 8  # prompts longer than this are prefilled in several chunks
MODES = {"last": True, "mean": False, "cls": True}  # method -> Normalize module present
PROMPTS = [list(range(5, 26)), list(range(30, 37)), [9, 8, 7]]  # 21 tokens (3 chunks), 7, 3
EXTENDED = PROMPTS[0] + [40, 41, 42, 43, 44]  # shares PROMPTS[0] as a cached prefix


@pytest.fixture(scope="module")
def models(tiny_model: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base, root = tiny_model("qwen3"), tmp_path_factory.mktemp("embedding_models")
    dirs = {method: make_embedding_model(base, root / method, method, norm) for method, norm in MODES.items()}
    dirs["matryoshka"] = make_embedding_model(base, root / "matryoshka", "last", True, matryoshka=True)
    dirs["bare"] = make_embedding_model(base, root / "bare", "last", True)
    make_base_model_checkpoint(dirs["bare"])
    return dirs


@pytest.fixture(scope="module")
def hf(tiny_model: Callable[[str], str]) -> Any:
    return load_hf_model(tiny_model("qwen3"))


def _engine(engine_factory: Any, path: str) -> Any:
    return engine_factory(
        path,
        is_embedding=True,
        dtype="float32",
        num_threads=1,
        log_level="warning",
        chunked_prefill_size=CHUNK,
        max_total_tokens=4096,
    )


def _max_err(got: list[list[float]], ref: list[list[float]]) -> float:
    assert [len(g) for g in got] == [len(r) for r in ref]
    return max(abs(a - b) for g, r in zip(got, ref) for a, b in zip(g, r))


@pytest.mark.parametrize("method", list(MODES))
def test_vectors_match_hf_with_and_without_cache_hit(method: str, models: dict, hf: Any, engine_factory: Any) -> None:
    engine = _engine(engine_factory, models[method])
    norm = MODES[method]
    engine.flush_cache()
    single = engine.encode(input_ids=PROMPTS[0])
    assert single["meta_info"]["cached_tokens"] == 0 and single["meta_info"]["prompt_tokens"] == 21
    assert _max_err([single["embedding"]], hf_embeddings(hf, PROMPTS[:1], method, norm)) < TOL
    batched = engine.encode(input_ids=PROMPTS + [EXTENDED])  # PROMPTS[0] and EXTENDED now in the tree
    assert _max_err([r["embedding"] for r in batched], hf_embeddings(hf, PROMPTS + [EXTENDED], method, norm)) < TOL
    again = engine.encode(input_ids=[EXTENDED, PROMPTS[1]])
    assert _max_err([r["embedding"] for r in again], hf_embeddings(hf, [EXTENDED, PROMPTS[1]], method, norm)) < TOL
    cached = again[0]["meta_info"]["cached_tokens"]
    # last-token pooling reuses the cached prefix; mean and CLS need every token's hidden state
    assert cached == (len(EXTENDED) - 1 if method == "last" else 0)
    norms = [sum(x * x for x in r["embedding"]) ** 0.5 for r in again]
    assert all(abs(n - 1) < 1e-5 for n in norms) == norm


def test_text_input_and_dimensions(models: dict, hf: Any, engine_factory: Any) -> None:
    engine = _engine(engine_factory, models["matryoshka"])
    ids = engine.tokenizer.encode("hello world, embeddings")
    result = engine.encode("hello world, embeddings")
    assert result["meta_info"]["prompt_tokens"] == len(ids)
    assert _max_err([result["embedding"]], hf_embeddings(hf, [ids], "last", True)) < TOL
    short = engine.encode(["hello world, embeddings", "x"], dimensions=16)
    ref = hf_embeddings(hf, [ids, engine.tokenizer.encode("x")], "last", True, dimensions=16)
    assert _max_err([r["embedding"] for r in short], ref) < TOL  # truncated, then normalised


def test_base_model_checkpoint_loads(models: dict, hf: Any, engine_factory: Any) -> None:
    """Qwen3-Embedding's layout: tensors without the `model.` prefix, no LM head (tied)."""
    got = _engine(engine_factory, models["bare"]).encode(input_ids=PROMPTS)
    assert _max_err([r["embedding"] for r in got], hf_embeddings(hf, PROMPTS, "last", True)) < TOL


def test_mismatches_are_refused_on_the_engine(models: dict, engine_factory: Any, llama_engine: Any) -> None:
    engine = _engine(engine_factory, models["last"])
    with pytest.raises(ValueError, match="dimensions: .*Matryoshka"):
        engine.encode("hi", dimensions=8)
    with pytest.raises(ValueError, match="embedding model"):
        engine.generate("hi", {"max_new_tokens": 2})
    with pytest.raises(ValueError, match="is-embedding"):
        llama_engine.encode("hi")


def test_encoder_models_are_refused_at_start(tiny_llama_dir: str, tmp_path: Path) -> None:
    import radixlm

    bert = tmp_path / "bert"
    shutil.copytree(tiny_llama_dir, bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="BERT"):
        radixlm.Engine(str(bert), is_embedding=True, log_level="warning")


def test_tensor_parallel_followers_return_hidden_states_too(models: dict, hf: Any) -> None:
    """At tp 2 the follower runs the same hidden-state output as rank 0 (a follower computing
    logits would wait in the LM head's all-gather forever), chunked mean pooling included."""
    import radixlm

    with radixlm.Engine(
        models["mean"],
        is_embedding=True,
        tp_size=2,
        dtype="float32",
        log_level="warning",
        chunked_prefill_size=CHUNK,
        max_total_tokens=2048,
        watchdog_timeout=60,
    ) as engine:
        got = engine.encode(input_ids=PROMPTS)
    assert _max_err([r["embedding"] for r in got], hf_embeddings(hf, PROMPTS, "mean", False)) < TOL
