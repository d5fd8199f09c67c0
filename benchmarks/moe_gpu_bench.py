"""GPU benchmark of the native MoE models (dummy bf16 weights, greedy, `ignore_eos`).

Prints, in one run: the measured device copy bandwidth; per MoE shape the batch-1 decode step
(CUDA graphs, back to back) with the bytes one token actually reads (attention and embedding
weights, the router, the selected experts' weights, the KV of its context) and that rate as a
share of the copy bandwidth; HF transformers `generate` at batch 1 on the same shape; offline
throughput of N prompts x (512 in, 256 out) against HF `generate`'s best batch on a subset.

    python benchmarks/moe_gpu_bench.py --shapes qwen3-30b-a3b --num-prompts 1000
    python benchmarks/moe_gpu_bench.py --shapes mixtral-8x7b   # needs ~95 GB: an H200
    python benchmarks/moe_gpu_bench.py --skip offline hf-decode  # the batch-1 decode step alone
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile

import torch
from gpu_bench import copy_bandwidth, decode_setup, hf_generate, radixlm_offline, random_prompts, time_back_to_back

CONTEXT = 256

SHAPES = {
    "qwen3-30b-a3b": (
        "Qwen3MoeConfig",
        dict(
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            vocab_size=151936,
            tie_word_embeddings=False,
            rope_theta=1000000.0,
            max_position_embeddings=8192,
        ),
    ),
    "mixtral-8x7b": (
        "MixtralConfig",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
            vocab_size=32000,
            tie_word_embeddings=False,
            rope_theta=1000000.0,
            max_position_embeddings=8192,
        ),
    ),
}


def model_dir(shape: str) -> str:
    import transformers

    cls_name, kwargs = SHAPES[shape]
    path = tempfile.mkdtemp(prefix=f"{shape}-")
    getattr(transformers, cls_name)(**kwargs, torch_dtype="bfloat16").save_pretrained(path)
    return path


def bytes_per_token(model: torch.nn.Module, config: object, context: int) -> tuple[int, int]:
    """(bytes one decode token reads, all weight bytes): every non-expert weight except the input
    embedding table, of which a token reads one row (unless tied to the LM head, which reads it
    all), top_k / E of the stacked expert weights (one token selects top_k distinct experts per
    layer), and the KV cache of `context` tokens (bf16)."""
    experts = dense = embed_skipped = 0
    tied = getattr(config, "tie_word_embeddings", False)
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        if "w13_weight" in name or "w2_weight" in name:
            experts += size
        elif "embed_tokens" in name and not tied:
            row = p.shape[-1] * p.element_size()
            dense += row
            embed_skipped += size - row
        else:
            dense += size
    num_experts = getattr(config, "num_experts", None) or config.num_local_experts
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * _head_dim(config) * 2 * context
    return dense + experts * config.num_experts_per_tok // num_experts + kv, dense + embed_skipped + experts


def _head_dim(config: object) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def run_decode(shape: str, path: str, copy_gbps: float, hf: bool = True) -> dict:
    runner, decode = decode_setup(path, CONTEXT, graphs=True)
    ms = time_back_to_back(lambda: runner.forward(decode), 200)
    read, total = bytes_per_token(runner.model, runner.model.config, CONTEXT)
    runner = decode = None
    gc.collect()
    torch.cuda.empty_cache()
    gbps = read / (ms / 1e3) / 1e9
    print(
        f"{shape}: decode bs1 {ms:.2f} ms/step back to back; reads {read / 1e9:.2f} GB/token of {total / 1e9:.1f} GB "
        f"weights -> {gbps:.0f} GB/s = {100 * gbps / copy_gbps:.0f}% of copy; {1e3 / ms:.0f} tok/s",
        flush=True,
    )
    print(f"  (after release: {torch.cuda.memory_allocated() / 2**30:.1f} GiB still allocated)", flush=True)
    hf_tok_s = hf_generate(path, random_prompts(1, 128), 64, 1) if hf else None
    if hf:
        print(f"{shape}: HF generate bs1 {hf_tok_s:.1f} tok/s", flush=True)
    return dict(
        decode_ms=ms,
        read_GB=read / 1e9,
        weight_GB=total / 1e9,
        achieved_GBps=gbps,
        fraction_of_copy_bw=gbps / copy_gbps,
        tok_s=1e3 / ms,
        hf_batch1_tok_s=hf_tok_s,
    )


def run_offline(shape: str, path: str, a: argparse.Namespace) -> dict:
    prompts = random_prompts(a.num_prompts, 512)
    ours, info = radixlm_offline(path, prompts, 256)
    print(f"{shape}: offline {a.num_prompts}x(512 in, 256 out): radixlm {ours:.0f} tok/s", flush=True)
    gc.collect()
    torch.cuda.empty_cache()
    hf_rates = {b: hf_generate(path, prompts[: a.hf_prompts], 256, b) for b in a.hf_batches}
    best = max(hf_rates.values())
    print(
        f"{shape}: offline {a.num_prompts}x(512 in, 256 out): radixlm {ours:.0f} tok/s; HF generate best "
        f"{best:.0f} tok/s {hf_rates} (first {a.hf_prompts} prompts); ratio {ours / best:.1f}x",
        flush=True,
    )
    return dict(offline_tok_s=ours, offline=info, hf_tok_s=hf_rates, ratio_vs_hf_best=ours / best)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["qwen3-30b-a3b"], choices=list(SHAPES))
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--hf-prompts", type=int, default=128)
    ap.add_argument("--hf-batches", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--skip", nargs="*", default=[], choices=["decode", "offline", "hf-decode"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    results: dict = {"device": torch.cuda.get_device_name(), "copy_GBps": copy_bandwidth() / 1e9}
    print(f"device {results['device']}: copy bandwidth {results['copy_GBps']:.0f} GB/s (read+write)", flush=True)
    for shape in a.shapes:
        path, res = model_dir(shape), {}
        if "decode" not in a.skip:
            res["decode"] = run_decode(shape, path, results["copy_GBps"], "hf-decode" not in a.skip)
        if "offline" not in a.skip:
            res.update(run_offline(shape, path, a))
        results[shape] = res
    print(json.dumps(results, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
