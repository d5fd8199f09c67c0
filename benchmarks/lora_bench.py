"""LoRA serving cost: offline throughput with requests spread over N adapters vs base-only, and
batch-1 decode time per step with one adapter vs the base model, dummy base weights.

Two engines run one after the other on the same random prompts: one without LoRA (the base
figures) and one serving N random PEFT adapters of rank R on all seven projections (q/k/v/o,
gate/up/down). On the LoRA engine the prompts are spread round-robin over the adapters; its
base-only throughput (lora_path None) is printed too. Throughput is output tokens / wall time of
one `Engine.generate` call over all prompts (greedy, ignore_eos; a small warm-up first, the radix
cache flushed). Batch-1 decode: (time of one request generating D+1 tokens - time generating 1)
/ D, the median of a few runs, so prefill and start-up are left out.

Targets (issue 24): LoRA throughput >= 75 % of the no-LoRA engine's, batch-1 overhead <= 15 %.

    python benchmarks/lora_bench.py                              # GPU: Llama-3-8B shape, bf16
    python benchmarks/lora_bench.py --skip-offline               # GPU: batch-1 decode only (~1.5 min)
    python benchmarks/lora_bench.py --tiny                       # CPU smoke run of the whole path
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's radixlm

import torch  # noqa: E402
from gpu_bench import SHAPES as GPU_SHAPES  # noqa: E402

SHAPES = {
    "llama-3-8b": GPU_SHAPES["llama-3-8b"],
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        tie_word_embeddings=False,
        max_position_embeddings=1024,
    ),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MIN_RATIO, MAX_OVERHEAD = 0.75, 0.15


def model_dir(shape: str, dtype: str) -> str:
    """A config-only model directory (the engine fills it with dummy weights)."""
    from transformers import LlamaConfig

    path = tempfile.mkdtemp(prefix=f"{shape}-")
    LlamaConfig(**SHAPES[shape], torch_dtype=dtype).save_pretrained(path)
    return path


def projection_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each target projection of a Llama config."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head = hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head, cfg["num_key_value_heads"] * head
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def write_adapter(path: str, cfg: dict, rank: int, seed: int) -> str:
    """A random PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, bf16) of
    `rank` on every projection; A and B small enough to keep activations finite."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module, (n_in, n_out) in projection_shapes(cfg).items():
            block = "self_attn" if module in TARGETS[:4] else "mlp"
            key = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, n_in, generator=gen) / n_in**0.5).bfloat16()
            tensors[f"{key}.lora_B.weight"] = (torch.randn(n_out, rank, generator=gen) * 0.01).bfloat16()
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS)}
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return path


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(n)]


def offline(engine: Any, prompts: list[list[int]], out_len: int, loras: Optional[list]) -> float:
    """Output tok/s of one generate call over `prompts` (`loras`: one adapter name or None each)."""
    params = {"max_new_tokens": out_len, "ignore_eos": True, "temperature": 0}
    engine.generate(input_ids=prompts[:2], sampling_params={**params, "max_new_tokens": 4}, lora_path=_first(loras, 2))
    engine.flush_cache()
    start = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params, lora_path=loras)
    elapsed = time.perf_counter() - start
    assert all(o["meta_info"]["completion_tokens"] == out_len for o in outs)
    return sum(o["meta_info"]["completion_tokens"] for o in outs) / elapsed


def _first(loras: Optional[list], n: int) -> Optional[list]:
    return None if loras is None else loras[:n]


def decode_ms(engine: Any, prompt: list[int], steps: int, lora: Optional[str], runs: int) -> float:
    """Batch-1 milliseconds per decode step: (t(steps + 1 tokens) - t(1 token)) / steps, median."""

    def timed(n: int) -> float:
        engine.flush_cache()  # each run prefills the prompt afresh
        start = time.perf_counter()
        params = {"max_new_tokens": n, "ignore_eos": True, "temperature": 0}
        engine.generate(input_ids=prompt, sampling_params=params, lora_path=lora)
        return time.perf_counter() - start

    timed(steps + 1)  # warm-up
    per_step = [(timed(steps + 1) - timed(1)) / steps for _ in range(runs)]
    return statistics.median(per_step) * 1e3


def run(a: argparse.Namespace) -> dict:
    import radixlm

    cfg = SHAPES[a.shape]
    path = model_dir(a.shape, a.dtype)
    adapters_dir = tempfile.mkdtemp(prefix="lora-adapters-")
    names = [f"lora{i}" for i in range(a.num_adapters)]
    paths = [write_adapter(os.path.join(adapters_dir, n), cfg, a.rank, i) for i, n in enumerate(names)]
    prompts = random_prompts(a.num_prompts, a.input_len, cfg["vocab_size"])
    spread = [names[i % len(names)] for i in range(len(prompts))]
    common = dict(
        load_format="dummy",
        dtype=a.dtype,
        device=a.device,
        skip_tokenizer_init=True,
        context_length=a.context_length,
        log_level="warning",
        **({"num_threads": a.num_threads} if a.device == "cpu" else {}),
    )
    out: dict = {"args": vars(a)}
    if a.skip_offline:
        common["max_running_requests"] = 8  # batch-1 decode only: fewer CUDA graphs to capture
    with radixlm.Engine(path, **common) as engine:
        if not a.skip_offline:
            out["base_tok_s"] = offline(engine, prompts, a.output_len, None)
        out["base_decode_ms"] = decode_ms(engine, prompts[0], a.decode_steps, None, a.decode_runs)
    lora_kwargs = dict(lora_paths=[f"{n}={p}" for n, p in zip(names, paths)], max_loras_per_batch=a.num_adapters)
    with radixlm.Engine(path, **common, **lora_kwargs, max_lora_rank=a.rank) as engine:
        if not a.skip_offline:
            out["lora_tok_s"] = offline(engine, prompts, a.output_len, spread)
            out["lora_engine_base_tok_s"] = offline(engine, prompts, a.output_len, None)
        out["lora_decode_ms"] = decode_ms(engine, prompts[0], a.decode_steps, names[0], a.decode_runs)
        out["lora_engine_base_decode_ms"] = decode_ms(engine, prompts[0], a.decode_steps, None, a.decode_runs)
    out["decode_overhead"] = out["lora_decode_ms"] / out["base_decode_ms"] - 1
    out["base_only_decode_overhead"] = out["lora_engine_base_decode_ms"] / out["base_decode_ms"] - 1
    out["pass"] = out["decode_overhead"] <= MAX_OVERHEAD
    if not a.skip_offline:
        out["throughput_ratio"] = out["lora_tok_s"] / out["base_tok_s"]
        out["pass"] = out["pass"] and out["throughput_ratio"] >= MIN_RATIO
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shape, float32, few prompts")
    ap.add_argument("--shape", default="llama-3-8b", choices=list(SHAPES))
    ap.add_argument("--num-adapters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=128)
    ap.add_argument("--decode-runs", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--context-length", type=int, default=4096)
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--skip-offline", action="store_true", help="batch-1 decode only (no throughput runs)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    if a.tiny:
        a.shape, a.dtype, a.device, a.num_prompts, a.input_len, a.output_len = "tiny", "float32", "cpu", 16, 32, 16
        a.decode_steps, a.decode_runs, a.context_length = 16, 3, 512
    out = run(a)
    print(json.dumps({k: v for k, v in out.items() if k != "args"}, indent=2))
    print(
        f"batch-1 decode ms/step: base engine {out['base_decode_ms']:.3f}, LoRA engine base-only "
        f"{out['lora_engine_base_decode_ms']:.3f} ({out['base_only_decode_overhead']:+.1%}), one adapter "
        f"{out['lora_decode_ms']:.3f} ({out['decode_overhead']:+.1%}, target <= {MAX_OVERHEAD:.0%})"
    )
    if not a.skip_offline:
        print(
            f"throughput with {a.num_adapters} adapters: {out['throughput_ratio']:.1%} of base "
            f"(target >= {MIN_RATIO:.0%})"
        )
    print("PASS" if out["pass"] else "FAIL")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
