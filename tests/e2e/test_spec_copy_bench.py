"""benchmarks/spec_copy_bench.py --tiny on the CPU: NGRAM and plain decoding give the same
greedy outputs on both workloads at both batch sizes (the script raises otherwise), every figure
is measured, and the copy workload's prompts are seed + passage + seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import spec_copy_bench

    return spec_copy_bench


def test_tiny_run_is_lossless_and_measures_every_row(bench, tmp_path: Path) -> None:
    out = tmp_path / "spec.json"
    results = bench.main(["--tiny", "--json", str(out)])
    rows = results["rows"]
    assert [(r["workload"], r["batch"]) for r in rows] == [("copy", 1), ("copy", 4), ("free", 1), ("free", 4)]
    for r in rows:
        assert r["identical"], r
        assert r["off_tok_s"] > 0 and r["ngram_tok_s"] > 0
        assert r["speedup"] == pytest.approx(r["ngram_tok_s"] / r["off_tok_s"])
        assert 1 <= r["accept_length"] <= 8 and 0 <= r["accept_rate"] <= 1  # 7 drafts + the target's token
        assert (r["copied"] is None) == (r["workload"] == "free")
    assert any(r["accept_length"] > 1 for r in rows)  # NGRAM drafts were accepted somewhere
    assert results["divergences"] == [] and all(r["diverged"] == [] for r in rows)
    for batch in ("1", "4"):
        cost = json.loads(out.read_text())["verify_cost"][batch]
        assert cost["decode_ms"] > 0 and cost["ratio"] == pytest.approx(cost["verify_ms"] / cost["decode_ms"])


def test_copy_prompts_repeat_the_seed_after_its_greedy_continuation(bench) -> None:
    a = bench.parse(["--tiny"])
    off = bench.build(bench.model_dir(a.shape), a, {})
    prompts, passages = bench.copy_prompts(off, a, off.runner.vocab_size)
    assert len(prompts) == a.batch and len({tuple(p) for p in prompts}) == a.batch
    for prompt, passage in zip(prompts, passages):
        seed = prompt[: a.seed_len]
        assert len(passage) == a.max_new_tokens and prompt == seed + passage + seed
    alone = bench.run_batch(off, [prompts[0][: a.seed_len]], a.max_new_tokens).outputs[0]
    assert alone == passages[0]  # G is the model's own greedy continuation of S


def test_copied_is_the_reproduced_share_of_each_passage(bench) -> None:
    assert bench.copied([[5, 6, 7, 8]], [[5, 6, 9, 8]]) == 0.5
    assert bench.copied([[1, 2], [3, 4]], [[1, 2], [9, 4]]) == 0.5


def _run(outputs: list[list[int]], tops: list[list]) -> object:
    import spec_copy_bench

    return spec_copy_bench.Run(outputs, 0, 1.0, 0, 0, 0, 0, tops=tops)


def test_a_divergence_is_a_near_tie_only_below_the_bound(bench) -> None:
    """The first differing position is found, and the plain run's top-1 - top-2 margin there
    (not the NGRAM run's) decides: a near-tie below the bound, a failure at or above it."""
    same = [[(-0.1, 5), (-2.0, 6)]]
    for plain_gap, verdict in ((4e-4, "near-tie"), (2e-3, "failure"), (0.5, "failure")):
        off = _run([[5, 5, 7, 1]], [same * 2 + [[(-0.6, 7), (-0.6 - plain_gap, 8)]] + same])
        on = _run([[5, 5, 8, 1]], [same * 2 + [[(-0.6, 8), (-0.9, 7)]] + same])
        d = bench.first_divergence(off, on, 0, 1e-3)
        assert (d["position"], d["plain_token"], d["spec_token"]) == (2, 7, 8)
        assert d["plain_margin"] == pytest.approx(plain_gap) and d["spec_margin"] == pytest.approx(0.3)
        assert d["verdict"] == verdict
    assert bench.margin(None) is None and bench.margin([(-0.1, 3)]) is None


def test_tie_bound_defaults_by_dtype(bench) -> None:
    assert bench.parse(["--dtype", "bfloat16"]).tie_bound == bench.TIE_BOUNDS["bfloat16"] == 0.05
    assert bench.parse(["--dtype", "float32"]).tie_bound == bench.TIE_BOUNDS["float32"] == 1e-3
    assert bench.parse(["--tie-bound", "0.2"]).tie_bound == 0.2
