"""Whole batch-1 decode steps with each decode-attention setting forced, in one run.

`decode_sweep.py` times the attention kernels alone; this times what a setting does to the
step (CUDA graphs, PDL, every other kernel around it): for each shape and context, the
engine's own choice first, then each `--settings` pair (splits, block_n) forced for batch 1.
Prints microseconds per step back to back and alone (gpu_bench's two timings) and the
fraction of the copy bandwidth measured in the same run.

    python benchmarks/decode_attn_ab.py [--shapes llama-3.2-1b llama-3-8b] [--contexts 256 2048]
                                        [--settings 8x32 16x64 16x128]
"""

from __future__ import annotations

import argparse
import os
import sys

import radixlm.attention.triton_backend as triton_backend

sys.path.insert(0, os.path.dirname(__file__))
import gpu_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-3-8b"])
    ap.add_argument("--contexts", nargs="+", type=int, default=[256, 2048])
    ap.add_argument("--settings", nargs="+", default=["8x32", "16x64", "16x128"], help="splits x block_n")
    a = ap.parse_args()
    copy = gpu_bench.copy_bandwidth() / 1e9
    print(f"copy bandwidth {copy:.0f} GB/s (read + written)", flush=True)
    engine = triton_backend.decode_launch_config
    forced = [tuple(int(v) for v in s.split("x")) for s in a.settings]
    try:
        for shape in a.shapes:
            path = gpu_bench.model_dir(shape)
            cfg = gpu_bench.SHAPES[shape]
            own = engine(1, cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"])
            for context in a.contexts:
                for setting in [None, *forced]:
                    triton_backend.decode_launch_config = (
                        engine if setting is None else (lambda b, h, d, s=setting: s if b == 1 else engine(b, h, d))
                    )
                    alone, ms, weights = gpu_bench.radixlm_decode_step(path, context, graphs=True)
                    gbps = weights / (ms / 1e3) / 1e9
                    name = f"engine {own}" if setting is None else f"forced {setting}"
                    print(
                        f"{shape} context {context} {name}: {ms * 1e3:.0f} us back to back ({alone * 1e3:.0f} "
                        f"alone) -> {gbps:.0f} GB/s = {100 * gbps / copy:.1f}% of copy",
                        flush=True,
                    )
    finally:
        triton_backend.decode_launch_config = engine


if __name__ == "__main__":
    main()
