"""The issue-25 GPU benchmarks run on the CPU: `ttft_bench.py --tiny` (engine TTFT and the same
forward timed), `extend_attn_bench.py --smoke` (kernel and SDPA peer against torch, the causal
FLOP formula) and `serving_gpu.py --tiny` (server, bench_serving per rate, offline ceiling); plus
serving_gpu's pure pieces (word tokenizer round trip, prompts per rate, percentiles)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(args: list[str], timeout: int, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **env}
    proc = subprocess.run([sys.executable, *args], env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def test_ttft_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "ttft.json"
    _run([str(ROOT / "benchmarks" / "ttft_bench.py"), "--tiny", "--reps", "2", "--json", str(out)], 300)
    result = json.loads(out.read_text())
    rows = result["tiny"]["rows"]
    assert sorted(int(n) for n in rows) == [16, 32, 64]
    profile = result["tiny"]["host_profile"]
    assert profile["length"] == 32 and len(profile["top_functions"]) == 15
    assert all(f["calls"] > 0 and f["own_us"] >= 0 for f in profile["top_functions"])
    for row in rows.values():
        assert len(row["ttft_all_ms"]) == 2 and min(row["ttft_all_ms"]) > 0
        assert row["idle_forward_ms"] > 0 and row["embedding"]["host_us"] > 0
        if result["device"] == "cpu":  # no device time: the ratio is against the forward's wall time
            assert row["gpu_ms"] is None
            assert row["ttft_over_gpu"] == pytest.approx(row["ttft_ms"] / row["idle_forward_ms"])


def test_extend_attn_bench_smoke() -> None:
    proc = _run([str(ROOT / "benchmarks" / "extend_attn_bench.py"), "--smoke"], 300, TRITON_INTERPRET="1")
    assert proc.stdout.count("triton and sdpa match torch") == 2
    assert "300 causal pairs" in proc.stdout  # 24 new tokens, no prefix: 24 * 25 / 2


def test_causal_flops_is_half_of_dense_without_prefix() -> None:
    from extend_attn_bench import causal_flops

    dense = 4.0 * 32 * 128 * 8192 * 8192
    assert causal_flops(8192, 0, 32, 128) == pytest.approx(dense / 2, rel=1e-3)
    assert causal_flops(1024, 7168, 32, 128) == 4.0 * 32 * 128 * sum(7168 + i + 1 for i in range(1024))


def test_word_tokenizer_round_trips_every_id(tmp_path: Path) -> None:
    from serving_gpu import save_word_tokenizer
    from transformers import AutoTokenizer

    save_word_tokenizer(str(tmp_path), 1000)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == 1000 and tok.eos_token_id == 2 and tok.bos_token_id == 1
    ids = [5, 999, 17, 3, 3, 640, 10, 21, 200]  # ids whose words start like the specials' ids
    assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids


def test_prompts_per_rate_and_percentiles() -> None:
    from serving_gpu import percentiles, prompts_per_rate

    assert [prompts_per_rate(r, 12.0, 32, 200) for r in (4.0, 16.0, 64.0, float("inf"))] == [48, 192, 200, 200]
    assert prompts_per_rate(1.0, 12.0, 32, 200) == 32
    p = percentiles([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1) and p["p99"] == pytest.approx(99.01)


@pytest.mark.slow
def test_serving_gpu_tiny(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    args = [str(ROOT / "benchmarks" / "serving_gpu.py"), "--tiny", "--rates", "4", "inf", "--input-len", "32"]
    args += ["--output-len", "8", "--min-prompts", "4", "--max-prompts", "6", "--duration", "1", "--json", str(out)]
    _run(args + ["--port", str(_free_port())], 600)
    result = json.loads(out.read_text())
    assert [r["num_prompts"] for r in result["rates"]] == [4, 6]
    for r in result["rates"]:
        assert r["completed"] == r["num_prompts"] and r["failed"] == 0
        assert 0 < r["ttft_ms"]["p50"] <= r["ttft_ms"]["p90"] <= r["ttft_ms"]["p99"]
        assert r["itl_ms"]["p50"] > 0 and r["output_throughput"] > 0
    assert result["offline_ceiling"]["num_prompts"] == 6 and result["offline_ceiling"]["output_throughput"] > 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
