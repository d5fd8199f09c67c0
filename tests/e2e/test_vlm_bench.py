"""benchmarks/vlm_bench.py --tiny runs end to end on CPU: both workloads' requests complete
with the expected prompt sizes, the shared-image workload hits the radix cache over its image
spans, and HF generate's rates are measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_vlm_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "vlm.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vlm_bench.py"), "--tiny", "--requests", "8"]
    cmd += ["--hf-requests", "4", "--hf-batches", "4", "--output-len", "4", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    per_request = 16 + 3 + 16 - 1 + (56 // 4 // 2) ** 2  # text, vision span, text; 14x14 patches merged 2x2
    distinct, shared = result["radixlm"]["distinct"], result["radixlm"]["shared"]
    for work in (distinct, shared):
        assert work["requests"] == 8 and work["prompt_tokens"] == 8 * per_request
    assert shared["cached_tokens"] >= 6 * (16 + 1 + 49)  # all but the 2 first showings of its 2 images
    assert shared["cached_tokens"] > distinct["cached_tokens"]
    for kind in ("with_preprocessing", "generate_only"):
        assert set(result["hf_distinct_tok_s"][kind]) == {"4"} and result["hf_distinct_tok_s"][kind]["4"] > 0


@pytest.mark.slow
def test_vlm_bench_profile_tiny(tmp_path: Path) -> None:
    """`--profile` prints the split: our tower equals transformers' on the same pixels, and the
    engine's prefill and decode times are measured."""
    out = tmp_path / "profile.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vlm_bench.py"), "--tiny", "--profile", "--requests", "2"]
    cmd += ["--output-len", "3", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    tower, engine = result["tower"], result["engine"]
    assert tower["images"] == 2 and tower["patches_per_image"] == (56 // 4) ** 2
    assert tower["max_abs_diff"] < 1e-5 and tower["ours_ms_per_image"] > 0 and tower["transformers_ms_per_image"] > 0
    assert engine["requests"] == 2 and engine["prompt_tokens_per_request"] == 16 + 3 + 16 - 1 + 49
    assert engine["prefill_with_images_ms_per_request"] > 0 and engine["generate_s"] > 0
