"""The three benchmark tools on CPU with the tiny Llama: bench_one_batch and bench_offline_throughput
in process, bench_serving against a real server over each API; plus the pure pieces (datasets,
arrivals, metrics) on synthetic inputs."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import httpx
import pytest

from radixlm.bench import offline_throughput as bench_offline_throughput
from radixlm.bench import one_batch as bench_one_batch
from radixlm.bench import serving as bench_serving
from radixlm.bench.datasets import TokenSource, add_dataset_args, sample_requests, sharegpt_requests
from radixlm.bench.metrics import RequestResult, compute_metrics, format_serving

SERVING_KEYS = [f"{stat}_{name}_ms" for name in ("ttft", "tpot", "itl", "e2e") for stat in ("mean", "median", "p99")]
SERVING_KEYS += [
    "completed",
    "failed",
    "duration",
    "total_input",
    "total_output",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "total_throughput",
    "concurrency",
    "cache_hit_rate",
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- bench_one_batch ----------------------------------------------------------------------------
def test_bench_one_batch(tiny_llama_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "one_batch.jsonl"
    results = bench_one_batch.main(
        [
            "--model-path",
            tiny_llama_dir,
            "--batch-size",
            "1",
            "3",
            "--input-len",
            "12",
            "--output-len",
            "4",
            "--num-threads",
            "1",
            "--copy-mb",
            "16",
            "--result-filename",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    for line in ("Prefill. latency:", "Decode.  median latency:", "Total. latency:", "Decode vs ceiling:"):
        assert line in printed
    assert [(r.batch_size, r.input_len, r.output_len) for r in results] == [(1, 12, 4), (3, 12, 4)]
    for r in results:
        assert 0 < r.prefill_latency < r.total_latency
        assert r.median_decode_latency > 0 and r.median_decode_throughput > 0
        assert r.decode_gbps > 0 and r.weight_bytes > 0 and r.kv_bytes_median_step > 0
    records = read_jsonl(out)
    assert len(records) == 2 and records[0]["copy_gbps"] > 0 and records[0]["matmul_gflops"] > 0


def test_bench_one_batch_dummy_weights(tiny_llama_dir: str) -> None:
    [r] = bench_one_batch.main(
        [
            "--model-path",
            tiny_llama_dir,
            "--load-format",
            "dummy",
            "--batch-size",
            "2",
            "--input-len",
            "8",
            "--output-len",
            "3",
            "--num-threads",
            "1",
            "--copy-mb",
            "8",
        ]
    )
    assert r.batch_size == 2 and r.median_decode_latency > 0


# -- bench_offline_throughput ---------------------------------------------------------------------
def test_bench_offline_throughput_with_hf_baseline(
    tiny_llama_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "offline.jsonl"
    record = bench_offline_throughput.main(
        [
            "--model-path",
            tiny_llama_dir,
            "--num-prompts",
            "4",
            "--random-input-len",
            "16",
            "--random-output-len",
            "5",
            "--random-range-ratio",
            "1.0",
            "--num-threads",
            "1",
            "--max-total-tokens",
            "1024",
            "--baseline",
            "hf",
            "--hf-batch-size",
            "2",
            "--result-filename",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "Offline Throughput Benchmark Result" in printed and "radixlm / HF output throughput:" in printed
    assert record["completed"] == 4 and record["input_tokens"] == 4 * 16 and record["output_tokens"] == 4 * 5
    assert record["duration"] > 0 and record["hf_duration"] > 0 and record["ratio_vs_hf"] > 0
    assert read_jsonl(out) == [json.loads(json.dumps(record))]


# -- bench_serving --------------------------------------------------------------------------------
def serve_bench(url: str, tmp_path: Path, *extra: str) -> dict:
    return bench_serving.main(
        [
            "--base-url",
            url,
            "--disable-tqdm",
            "--output-file",
            str(tmp_path / "serving.jsonl"),
            "--output-details",
            "--flush-cache",
            *extra,
        ]
    )


def check_sane(record: dict, num: int) -> None:
    """Every metric present; per request TTFT <= E2E; totals are the sums of the per-request counts."""
    missing = [k for k in SERVING_KEYS if k not in record]
    assert not missing, missing
    assert record["completed"] == num and record["failed"] == 0
    for ttft, e2e, itl in zip(record["ttfts"], record["e2e_latencies"], record["itls"]):
        assert 0 < ttft <= e2e and all(gap >= 0 for gap in itl)
    assert record["total_input"] == sum(record["input_lens"]) and record["total_output"] == sum(record["output_lens"])
    assert record["mean_ttft_ms"] <= record["mean_e2e_ms"] and record["p99_ttft_ms"] <= record["p99_e2e_ms"]
    assert record["mean_tpot_ms"] > 0 and record["median_itl_ms"] >= 0 and record["concurrency"] > 0
    assert record["output_throughput"] > 0 and 0.0 <= record["cache_hit_rate"] <= 1.0


def test_bench_serving_native_exact_counts_plots(url: str, tmp_path: Path) -> None:
    """Token ids sent as ids: the server's counts equal the requested lengths exactly."""
    record = serve_bench(
        url,
        tmp_path,
        "--backend",
        "radixlm",
        "--num-prompts",
        "4",
        "--random-input-len",
        "20",
        "--random-output-len",
        "6",
        "--random-range-ratio",
        "1.0",
        "--tokenize-prompt",
        "--request-rate",
        "50",
        "--max-concurrency",
        "2",
        "--plot",
        str(tmp_path / "plots"),
    )
    check_sane(record, 4)
    assert record["input_lens"] == [20] * 4 and record["output_lens"] == [6] * 4
    assert record["max_concurrency"] == 2 and record["peak_concurrent_requests"] <= 2
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["radixlm_random_rate50_latency_cdf.png", "radixlm_random_rate50_timeline.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert read_jsonl(tmp_path / "serving.jsonl")[-1]["mean_ttft_ms"] == record["mean_ttft_ms"]


@pytest.mark.parametrize("backend", ["openai", "openai-chat", "sglang"])
def test_bench_serving_text_backends_match_server_usage(
    url: str, tiny_llama_dir: str, tmp_path: Path, backend: str
) -> None:
    """Text prompts: the prompt counts are what the server's tokenizer makes of each text."""
    args = [
        "--backend",
        backend,
        "--num-prompts",
        "3",
        "--random-input-len",
        "10",
        "--random-output-len",
        "5",
        "--random-range-ratio",
        "1.0",
    ]
    record = serve_bench(url, tmp_path, *args)
    check_sane(record, 3)
    assert record["output_lens"] == [5] * 3
    if backend != "openai-chat":  # the chat template adds tokens around the text
        assert record["input_lens"] == server_prompt_counts(url, tiny_llama_dir, args)


def server_prompt_counts(url: str, model_path: str, args: list[str]) -> list[int]:
    """The same dataset rebuilt here, each text counted by the server's POST /tokenize."""
    from radixlm.tokenizer.loader import load_tokenizer

    parser = argparse.ArgumentParser()
    add_dataset_args(parser)
    ns, _ = parser.parse_known_args(args)
    texts = [r.prompt for r in sample_requests(ns, load_tokenizer(model_path))]
    return [httpx.post(f"{url}/tokenize", json={"text": t}, timeout=30).json()["count"] for t in texts]


def test_bench_serving_shared_prefix_hits_cache(url: str, tmp_path: Path) -> None:
    record = serve_bench(
        url,
        tmp_path,
        "--backend",
        "radixlm",
        "--dataset-name",
        "generated-shared-prefix",
        "--gsp-num-groups",
        "1",
        "--gsp-prompts-per-group",
        "3",
        "--gsp-system-prompt-len",
        "48",
        "--gsp-question-len",
        "4",
        "--gsp-output-len",
        "3",
        "--tokenize-prompt",
        "--max-concurrency",
        "1",
    )
    check_sane(record, 3)  # one at a time, after a flush: the first misses, the others hit the system prompt
    assert sum(cached >= 48 for cached in record["cached_tokens"]) == 2 and record["cache_hit_rate"] > 0.5


# -- pure pieces ----------------------------------------------------------------------------------
class _Tok:
    """A stand-in tokenizer: one id per character."""

    all_special_ids = [0]

    def __len__(self) -> int:
        return 50

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 + ord(c) % 49 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


def test_datasets(tmp_path: Path) -> None:
    source = TokenSource(_Tok(), None, random.Random(0))
    assert 0 not in source.ids(200)
    ns = argparse.Namespace(
        dataset_name="random", seed=0, num_prompts=20, random_input_len=10, random_output_len=4, random_range_ratio=0.5
    )
    reqs = sample_requests(ns, _Tok())
    assert all(5 <= r.prompt_len <= 10 and 2 <= r.output_len <= 4 for r in reqs)
    path = tmp_path / "sharegpt.json"
    convs = [
        {"conversations": [{"from": "human", "value": "x" * (3 + i)}, {"from": "gpt", "value": "y" * 6}]}
        for i in range(6)
    ]
    path.write_text(json.dumps(convs))
    pairs = sharegpt_requests(str(path), 5, _Tok(), random.Random(0))
    assert len(pairs) == 5 and all(r.prompt_len >= 4 and r.output_len == 6 for r in pairs)
    with pytest.raises(ValueError, match="usable"):
        sharegpt_requests(str(path), 6, _Tok(), random.Random(0))


def test_arrivals_and_metrics() -> None:
    offsets = bench_serving.arrival_offsets(2000, 10.0, seed=0)
    assert offsets == sorted(offsets) and 180 < offsets[-1] < 220  # mean gap 1 / rate
    assert bench_serving.arrival_offsets(3, float("inf"), 0) == [0.0, 0.0, 0.0]
    a = RequestResult(
        True,
        start=0.0,
        ttft=0.1,
        latency=0.5,
        prompt_len=10,
        output_len=5,
        cached_tokens=4,
        itl=[0.1] * 4,
        events=[(0.1 * i, 1) for i in range(1, 6)],
    )
    b = RequestResult(
        True, start=0.25, ttft=0.2, latency=0.5, prompt_len=10, output_len=1, cached_tokens=0, events=[(0.2, 1)]
    )
    m = compute_metrics([a, b, RequestResult(error="boom")], duration=1.0)
    assert (m.completed, m.failed, m.total_input, m.total_output) == (2, 1, 20, 6)
    assert m.cache_hit_rate == pytest.approx(0.2) and m.concurrency == pytest.approx(1.0)
    assert m.tpot.mean == pytest.approx(100.0) and m.peak_concurrent_requests == 2
    text = format_serving(m, "radixlm", float("inf"), None)
    assert "Serving Benchmark Result" in text and "Median TTFT (ms):" in text and "Cache hit rate:" in text
