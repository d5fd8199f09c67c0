"""benchmarks/roofline.py's offline bound, worked by hand on a one-layer toy shape.

Toy shape: hidden 4, intermediate 8, 1 layer, 2 heads, 1 KV head, head dim 2, vocab 10, 2 bytes.
  non-embedding params = 4 * (4 + 2 * 2) + 4 * 4 + 3 * 4 * 8 = 144 -> 288 FLOPs per token
  LM head 2 * 4 * 10 = 80 FLOPs per token with logits; attention 4 * 2 * 2 * 1 = 16 FLOPs per pair
  weight bytes per step (144 + norms 3 * 4 + head 40) * 2 = 392; embedding row 8 bytes; K/V 8 per key
A decode step of n rows over k keys: FLOPs 368 n + 16 k, bytes 392 + 8 n + 8 k.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from roofline import offline_bound  # noqa: E402

TOY = dict(
    hidden_size=4,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=10,
    tie_word_embeddings=True,
)


def bound(prompts: list[int], out_len: int, max_running: int, peak: float, bw: float, config: dict = TOY):
    return offline_bound(config, prompts, out_len, max_running, 2, peak, bw)


def test_prefill_counts_layers_causal_pairs_and_one_head_row_per_prompt() -> None:
    # L=3: 288*3 + 80 + 16*6 = 1040; L=5: 288*5 + 80 + 16*15 = 1760
    r = bound([3, 5], 1, 4, peak=100.0, bw=1.0)
    assert r.prefill_flops == 2800.0
    assert r.prefill_s == pytest.approx(28.0)
    assert r.decode_steps == 0 and r.decode_s == 0.0 and r.seconds == pytest.approx(28.0)


def test_memory_bound_decode_one_request_per_wave() -> None:
    # out 3 -> 2 steps a wave. Wave [3]: keys 4, 5 -> bytes 432, 440. Wave [5]: keys 6, 7 -> 448, 456.
    r = bound([3, 5], 3, 1, peak=1e9, bw=100.0)
    assert r.decode_steps == 4 and r.flop_bound_steps == 0
    assert r.decode_s == pytest.approx((432 + 440 + 448 + 456) / 100.0)
    assert r.seconds == pytest.approx(r.prefill_s + r.decode_s)


def test_flop_bound_decode_one_request_per_wave() -> None:
    # FLOPs: wave [3] 368 + 64, 368 + 80; wave [5] 368 + 96, 368 + 112
    r = bound([3, 5], 3, 1, peak=1.0, bw=1e12)
    assert r.flop_bound_steps == 4
    assert r.decode_s == pytest.approx(432 + 448 + 464 + 480)


def test_waves_of_max_running_share_the_weight_reads() -> None:
    # one wave [3, 5]: keys 8 + 2j -> bytes 392 + 16 + 80 = 488, then 504
    one_wave = bound([3, 5], 3, 2, peak=1e9, bw=100.0)
    assert one_wave.decode_steps == 2
    assert one_wave.decode_s == pytest.approx((488 + 504) / 100.0)
    assert bound([3, 5], 3, 7, peak=1e9, bw=100.0) == one_wave


def test_wave_boundary_mixes_flop_and_memory_bound_steps() -> None:
    # [3, 5] | [3] at peak 1000, bandwidth 900. Wave 1, 2 rows: FLOPs 896, 928 (0.896 s, 0.928 s)
    # against bytes 488, 504 (0.542 s, 0.560 s) -> FLOPs. Wave 2, 1 row: FLOPs 432, 448 (0.432 s,
    # 0.448 s) against bytes 432, 440 (0.480 s, 0.489 s) -> bytes.
    r = bound([3, 5, 3], 3, 2, peak=1000.0, bw=900.0)
    assert r.decode_steps == 4 and r.flop_bound_steps == 2
    assert r.decode_s == pytest.approx(0.896 + 0.928 + (432 + 440) / 900.0)


def test_tied_and_untied_heads_read_the_same_bytes() -> None:
    # a step reads the head matrix once either way; the untied embedding table only by rows
    untied = bound([3, 5], 3, 1, peak=1e9, bw=100.0, config={**TOY, "tie_word_embeddings": False})
    assert untied == bound([3, 5], 3, 1, peak=1e9, bw=100.0)
    assert untied.decode_s == pytest.approx(17.76)


def test_config_head_dim_overrides_hidden_over_heads() -> None:
    # head dim 4: params 4 * (8 + 8) + 8 * 4 + 96 = 192; L=1: 2 * 192 + 80 + 4 * 2 * 4 * 1 = 496
    r = bound([1], 1, 1, peak=1.0, bw=1.0, config={**TOY, "head_dim": 4})
    assert r.prefill_flops == 496.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        bound([3], 3, 0, peak=1.0, bw=1.0)
    with pytest.raises(ValueError):
        bound([3], 0, 1, peak=1.0, bw=1.0)


def test_gpu_bench_bound_holds_only_the_requests_the_kv_pool_fits() -> None:
    from gpu_bench import SHAPES, run_bound

    prompts = [[7] * 512] * 300
    run = {"seconds": 20.0, "kv_capacity_tokens": 100 * (512 + 256) + 5}
    row = run_bound("llama-3.2-1b", prompts, 256, 512, run, copy_gbps=3000.0, peak_tflops=700.0)
    expected = offline_bound(SHAPES["llama-3.2-1b"], [512] * 300, 256, 100, 2, 700e12, 3000e9)
    assert row["running"] == 100 and row["decode_steps"] == 3 * 255
    assert row["bound_s"] == pytest.approx(expected.seconds)
    assert row["pct_of_bound"] == pytest.approx(100 * expected.seconds / 20.0)
    roomy = run_bound("llama-3.2-1b", prompts, 256, 64, {**run, "kv_capacity_tokens": 10**7}, 3000.0, 700.0)
    assert roomy["running"] == 64 and roomy["decode_steps"] == 5 * 255
