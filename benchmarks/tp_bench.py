"""Tensor parallelism: tp 1 vs tp N in one run, dummy weights, one JSON document on stdout.

Per tp size: the decode step time at each batch size (from two generate calls that differ
only in output length, so prefill cancels out) beside the weight-read floor of one step
(weights / tp / copy bandwidth), and offline throughput on random prompts.

    python benchmarks/tp_bench.py                     # Llama-3-8B shape, bf16, tp 1 vs 2 (2 GPUs)
    python benchmarks/tp_bench.py --tiny --tp 1 2     # CPU smoke test (gloo), tiny shape, float32
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from typing import Any

import torch

LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
    rope_theta=500000.0,
    max_position_embeddings=8192,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    tie_word_embeddings=False,
    max_position_embeddings=1024,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shape, float32, small workload (CPU smoke test)")
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=None, help="decode batch sizes (default 1 32)")
    p.add_argument("--context", type=int, default=None, help="prompt length of the decode measurement")
    p.add_argument("--decode-steps", type=int, default=None)
    p.add_argument("--num-prompts", type=int, default=None, help="offline workload size")
    p.add_argument("--input-len", type=int, default=None)
    p.add_argument("--output-len", type=int, default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    small = a.tiny
    defaults = dict(
        batches=[1, 8] if small else [1, 32],
        context=32 if small else 256,
        decode_steps=8 if small else 64,
        num_prompts=16 if small else 1000,
        input_len=32 if small else 512,
        output_len=16 if small else 256,
        max_total_tokens=4096 if small else None,
    )
    for key, value in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    return a


def model_dir(shape: dict) -> str:
    from transformers import LlamaConfig

    path = tempfile.mkdtemp(prefix="tp-bench-")
    LlamaConfig(**shape, torch_dtype="bfloat16").save_pretrained(path)
    return path


def weight_bytes(shape: dict, dtype_bytes: int) -> int:
    h, i, n, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    d = h // shape["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * shape["num_key_value_heads"] * d + 3 * h * i
    return (n * per_layer + (1 if shape["tie_word_embeddings"] else 2) * v * h) * dtype_bytes


def copy_bandwidth() -> float | None:
    """Device-to-device copy on GPU 0, bytes read + written per second (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    torch.cuda.synchronize()
    gbps = 2 * src.numel() * 20 / (time.perf_counter() - start)
    del src, dst
    torch.cuda.empty_cache()
    return gbps


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(n)]


def timed_generate(engine: Any, ids: list[list[int]], out_len: int) -> float:
    params = {"temperature": 0, "max_new_tokens": out_len, "ignore_eos": True}
    start = time.perf_counter()
    engine.generate(input_ids=ids, sampling_params=params)
    return time.perf_counter() - start


def decode_step_ms(engine: Any, a: argparse.Namespace, batch: int, vocab: int) -> float:
    """(time for 1 + steps tokens - time for 1 token) / steps, fresh prompts each call (no cache hit)."""
    timed_generate(engine, prompts(batch, a.context, vocab, seed=100 + batch), 2)  # warm-up
    t1 = timed_generate(engine, prompts(batch, a.context, vocab, seed=200 + batch), 1)
    tn = timed_generate(engine, prompts(batch, a.context, vocab, seed=300 + batch), 1 + a.decode_steps)
    return (tn - t1) / a.decode_steps * 1e3


def run_tp(path: str, tp: int, a: argparse.Namespace, shape: dict, dtype: str) -> dict:
    import radixlm

    kwargs = dict(
        load_format="dummy",
        dtype=dtype,
        skip_tokenizer_init=True,
        tp_size=tp,
        log_level="warning",
        max_total_tokens=a.max_total_tokens,
        disable_cuda_graph=a.disable_cuda_graph,
        context_length=max(a.context, a.input_len) + max(a.decode_steps, a.output_len) + 8,
    )
    start = time.perf_counter()
    with radixlm.Engine(**{"model_path": path, **kwargs}) as engine:
        result: dict = {"start_s": round(time.perf_counter() - start, 1), "decode_step_ms": {}}
        for batch in a.batches:
            result["decode_step_ms"][str(batch)] = round(decode_step_ms(engine, a, batch, shape["vocab_size"]), 3)
        work = prompts(a.num_prompts, a.input_len, shape["vocab_size"], seed=7)
        seconds = timed_generate(engine, work, a.output_len)
    out_tokens = a.num_prompts * a.output_len
    result["offline"] = {
        "prompts": a.num_prompts,
        "input_len": a.input_len,
        "output_len": a.output_len,
        "seconds": round(seconds, 2),
        "output_tok_s": round(out_tokens / seconds, 1),
        "total_tok_s": round((out_tokens + a.num_prompts * a.input_len) / seconds, 1),
    }
    return result


def speedups(results: dict, base_tp: str) -> dict:
    """Per tp size: decode step time and offline throughput relative to `base_tp`."""
    base = results[base_tp]
    return {
        tp: {
            "decode": {b: round(base["decode_step_ms"][b] / ms, 2) for b, ms in r["decode_step_ms"].items()},
            "offline": round(r["offline"]["output_tok_s"] / base["offline"]["output_tok_s"], 2),
        }
        for tp, r in results.items()
    }


def main() -> None:
    a = parse_args()
    shape = TINY if a.tiny else LLAMA3_8B
    dtype = "float32" if a.tiny else "bfloat16"
    path = model_dir(shape)
    bandwidth = copy_bandwidth()
    weights = weight_bytes(shape, 4 if a.tiny else 2)
    report: dict = {
        "shape": "tiny" if a.tiny else "llama-3-8b",
        "dtype": dtype,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count(),
        "weight_bytes": weights,
        "copy_bandwidth_gbps": None if bandwidth is None else round(bandwidth / 1e9, 1),
        "workload": {
            k: getattr(a, k) for k in ("batches", "context", "decode_steps", "num_prompts", "input_len", "output_len")
        },
        "tp": {},
    }
    for tp in a.tp:
        result = run_tp(path, tp, a, shape, dtype)
        if bandwidth:
            floor_ms = weights / tp / bandwidth * 1e3
            result["decode_floor_ms"] = round(floor_ms, 3)  # every rank reads its weight shard once
            result["batch1_weight_gbps_per_gpu"] = round(
                weights / tp / (result["decode_step_ms"][str(a.batches[0])] / 1e3) / 1e9, 1
            )
        report["tp"][str(tp)] = result
        print(f"tp {tp}: {json.dumps(result)}", file=sys.stderr, flush=True)
    report[f"speedup_vs_tp{a.tp[0]}"] = speedups(report["tp"], str(a.tp[0]))
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
