"""Where a vision-language request's time goes (a short run beside `vlm_bench.py`'s full one).

On the same dummy-weight model as `vlm_bench.py` (Qwen2.5-VL-7B shape, bf16, CUDA; `--tiny`:
the tiny shape on CPU), for `--requests` requests with one image each it prints:
  front:   the HF image processor per image (one thread) and the front's `prepare_all` per
           image (its threads), in ms;
  tower:   the vision tower per image, radixlm's batched encoder (with its fused norm / rotary
           kernels on CUDA, and without them) vs transformers' own forward on the same module
           and pixels, one call over all images (and the largest difference);
  engine:  one `Engine.generate` of the requests with 1 output token (front + vision + prefill,
           the front overlapping the rest), the same prompts text-only (language-model prefill
           alone), and with `--output-len` tokens (decode ms per step = the extra time over the
           extra steps); each timed on a second pass, the first pass's figures printed beside;
           `prefill_steps` counts the scheduler's prefill steps of each run and their requests
           (requests per step: how well the front's images reach the scheduler together).

    python benchmarks/vlm_profile.py                 # ~1 minute on one H100
    python benchmarks/vlm_profile.py --tiny          # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's radixlm

from vlm_bench import QWEN25_VL_7B, TINY, Workload, make_engine, model_dir, preprocess_ms, sync, workload  # noqa: E402


def timed(fn: Callable[[], Any], device: str, repeat: int = 3) -> float:
    """Best of `repeat` wall seconds of `fn()` (after one warm-up call), device synchronized;
    `repeat` 0: the seconds of one call with no warm-up."""
    if repeat:
        fn()
    best = float("inf")
    for _ in range(max(repeat, 1)):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def tower_profile(path: str, work: Workload, device: str, dtype: torch.dtype) -> dict:
    """ms per image of the vision tower, ours vs transformers', on one module and one batch."""
    import importlib

    from transformers import AutoConfig, AutoImageProcessor

    from radixlm.models.qwen2_vl import Qwen2_5_VLForConditionalGeneration
    from radixlm.models.qwen2_vl_vision import QwenVisionEncoder

    config = AutoConfig.from_pretrained(path)
    module, name = Qwen2_5_VLForConditionalGeneration.vision_class
    with torch.device(device):
        visual = getattr(importlib.import_module(module), name)._from_config(config.vision_config)
    visual = visual.to(dtype).eval()
    processed = AutoImageProcessor.from_pretrained(path)(images=work.images, return_tensors="pt")
    pixels = processed["pixel_values"].to(device)
    grid = processed["image_grid_thw"].to(device)
    grids = [tuple(int(x) for x in g) for g in processed["image_grid_thw"]]
    encoder = QwenVisionEncoder(visual)
    n = len(work.images)
    with torch.no_grad():
        encoder(pixels[: pixels.shape[0] // n], grids[:1])  # one image: what the engine's warm-up runs
        first = timed(lambda: encoder(pixels, grids), device, repeat=0)  # a new image count: its first call
        ours = timed(lambda: encoder(pixels, grids), device)
        unfused = QwenVisionEncoder(visual, fused=False)  # transformers' norms, float32 rotary
        eager = timed(lambda: unfused(pixels, grids), device)
        theirs = timed(lambda: visual(pixels, grid_thw=grid), device, repeat=1)
        diff = (encoder(pixels, grids).float() - visual(pixels, grid_thw=grid).pooler_output.float()).abs().max()
    out = {
        "images": n,
        "patches_per_image": int(pixels.shape[0]) // n,
        "ours_first_call_ms_per_image": round(first * 1e3 / n, 2),
        "ours_ms_per_image": round(ours * 1e3 / n, 2),
        "ours_fused_kernels": encoder.fusable and device == "cuda",
        "ours_unfused_ms_per_image": round(eager * 1e3 / n, 2),
        "transformers_ms_per_image": round(theirs * 1e3 / n, 2),
        "max_abs_diff": float(diff),
    }
    return out


def engine_profile(path: str, work: Workload, fresh: Workload, out_len: int, device: str, dtype: str) -> dict:
    """Seconds of `Engine.generate` over the requests: 1 output token with images, 1 token
    text-only (same prompt lengths), `out_len` tokens with images; the radix cache flushed
    before each, so every run's images are new to it. Each run is timed on its second pass
    (the first compiles the kernels its batch shapes need, which later runs would reuse)."""
    greedy = {"ignore_eos": True, "temperature": 0}
    n = len(work.prompts)
    # decode runs at batch n: capture no larger CUDA graphs (a shorter start)
    with make_engine(path, device, dtype, cuda_graph_max_bs=max(8, n)) as engine:
        engine.generate(
            input_ids=fresh.prompts[:2], image_data=fresh.images[:2], sampling_params=dict(greedy, max_new_tokens=4)
        )
        start = time.perf_counter()
        prepared = engine.images.prepare_all(work.prompts, [[image] for image in work.images])
        front = time.perf_counter() - start
        rng = np.random.default_rng(7)  # distinct text of the same lengths: no image, no cache hits
        text = [rng.integers(100, 150000, size=len(p.check_ids)).tolist() for p in prepared]
        runs, first, steps = {}, {}, {}
        for label, ids, images, tokens in (
            ("prefill_with_images", work.prompts, work.images, 1),
            ("prefill_text_only", text, None, 1),
            ("generate_with_images", fresh.prompts, fresh.images, out_len),
        ):
            for seconds in (first, runs):
                engine.flush_cache()
                before = _extend_steps(engine)
                start = time.perf_counter()
                engine.generate(input_ids=ids, image_data=images, sampling_params=dict(greedy, max_new_tokens=tokens))
                seconds[label] = time.perf_counter() - start
                steps[label] = {k: round(v - before[k], 3) for k, v in _extend_steps(engine).items()}
    decode_step = (runs["generate_with_images"] - runs["prefill_with_images"]) / max(1, out_len - 1)
    return {
        "requests": n,
        "prompt_tokens_per_request": len(text[0]),
        "front_prepare_ms_per_image": round(front * 1e3 / n, 2),
        "prefill_with_images_ms_per_request": round(runs["prefill_with_images"] * 1e3 / n, 2),
        "prefill_text_only_ms_per_request": round(runs["prefill_text_only"] * 1e3 / n, 2),
        "first_pass_ms_per_request": {k: round(v * 1e3 / n, 2) for k, v in first.items()},
        "generate_s": round(runs["generate_with_images"], 3),
        "decode_ms_per_step": round(decode_step * 1e3, 2),
        "prefill_steps": steps,  # per run (second pass): prefill steps, requests in them, host seconds by phase
        "output_tok_s": round(n * out_len / runs["generate_with_images"], 1),
    }


def _extend_steps(engine: Any) -> dict[str, float]:
    """The scheduler's prefill-step totals so far: steps, rows (requests) and host seconds by phase."""
    totals = engine.get_server_info()["step_times"].get("extend", {})
    return {k: totals.get(k, 0.0) for k in ("steps", "rows", "schedule", "launch", "device_wait", "process")}


def profile(tiny: bool, n: int, side: int, out_len: int, skip_engine: bool = False) -> dict:
    """The split described in the module docstring, as a dict (also printed)."""
    device = "cpu" if tiny else "cuda"
    dtype = "float32" if tiny else "bfloat16"
    path = model_dir(TINY if tiny else QWEN25_VL_7B)
    work = workload(n, n, side, 16, seed=1)
    results: dict = {"shape": "tiny" if tiny else "qwen2.5-vl-7b", "image_side": side, "output_len": out_len}
    results["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results["front_processor_ms_per_image_one_thread"] = preprocess_ms(path, work, count=min(n, 8))
    results["tower"] = tower_profile(path, work, device, getattr(torch, dtype))
    print(f"tower: {results['tower']}", flush=True)
    if device == "cuda":
        torch.cuda.empty_cache()  # the tower's memory back before the engine sizes its cache
    if not skip_engine:
        fresh = workload(n, n, side, 16, seed=3)
        results["engine"] = engine_profile(path, work, fresh, out_len, device, dtype)
    print(json.dumps(results, indent=1), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny Qwen2.5-VL shape on CPU, float32")
    ap.add_argument("--requests", type=int, default=None, help="requests (images) profiled (32; tiny 4)")
    ap.add_argument("--image-size", type=int, default=None, help="square image side (672; tiny 56)")
    ap.add_argument("--output-len", type=int, default=None, help="output tokens per request (64; tiny 8)")
    ap.add_argument("--skip-engine", action="store_true", help="front and tower only")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    n = a.requests or (4 if a.tiny else 32)
    side = a.image_size or (56 if a.tiny else 672)
    out_len = a.output_len or (8 if a.tiny else 64)
    results = profile(a.tiny, n, side, out_len, a.skip_engine)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
