"""Quantization on one GPU, dummy weights, bf16 activations: bf16 vs fp8 vs int4 vs GGUF Q4_K.

Prints, in one run: the device copy bandwidth (read + write); per model shape the batch-1 decode
step (CUDA graphs, 200 steps back to back: the GPU's own time) and its tok/s for bf16, online fp8
(`--quantization fp8`), int4 (a GPTQ config, group 128, the W4A16 kernel AWQ shares) and GGUF Q4_K
blocks (`--quantization gguf` with dummy blocks), with each model's weight bytes and speed-up over
bf16; per linear shape the batch-1 kernel alone (GEMV of bf16, e4m3, int4, Q4_K) with its achieved
bandwidth (weight bytes read / time) as a % of the copy bandwidth; and offline throughput of fp8 vs
bf16 on random prompts.

    python benchmarks/quant_bench.py --quick          # Llama-3.2-1B + 8B decode, kernels, 1B offline: < 4 min
    python benchmarks/quant_bench.py --num-prompts 2000 --input-len 512 --output-len 256
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from gpu_bench import SHAPES, copy_bandwidth, decode_setup, radixlm_offline, random_prompts, time_back_to_back

GPTQ_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
# method label -> (ServerArgs keywords, quantization_config written into the model's config.json)
METHODS = {
    "bf16": ({}, None),
    "fp8": ({"quantization": "fp8"}, None),
    "int4": ({}, GPTQ_CONFIG),
    "gguf-q4k": ({"quantization": "gguf"}, None),
}


def model_dir(shape: str, quant_config: dict | None) -> str:
    from transformers import LlamaConfig

    path = tempfile.mkdtemp(prefix=f"{shape}-")
    config = LlamaConfig(**SHAPES[shape], torch_dtype="bfloat16")
    if quant_config is not None:
        config.quantization_config = quant_config
    config.save_pretrained(path)
    return path


def decode(shape: str, method: str, context: int) -> dict:
    """Batch-1 decode of `shape` with `method`: ms per step (back to back) and weight bytes."""
    kwargs, quant_config = METHODS[method]
    runner, batch = decode_setup(model_dir(shape, quant_config), context, True, **kwargs)
    ms = time_back_to_back(lambda: runner.forward(batch), 200)
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    runner = None
    torch.cuda.empty_cache()
    return {"ms_per_step": ms, "tok_s": 1000 / ms, "weight_gb": weights / 1e9}


def linear_shapes(shape: str) -> dict[str, tuple[int, int]]:
    """(N, K) of each linear of one decoder layer."""
    cfg = SHAPES[shape]
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    d = h // cfg["num_attention_heads"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * d
    return {"qkv": (qkv, h), "o": (h, h), "gate_up": (2 * i, h), "down": (h, i)}


def kernel_layer(method: str, n: int, k: int) -> torch.nn.Module:
    """One quantized (or plain) linear of [N, K] on CUDA, dummy weights, loading finished."""
    from radixlm.distributed.group import TPGroup
    from radixlm.layers.linear import ColumnParallelLinear
    from radixlm.layers.quantization import gguf_blocks
    from radixlm.layers.quantization.fp8 import Fp8Method
    from radixlm.layers.quantization.gguf import GGUFMethod
    from radixlm.layers.quantization.int4 import int4_method
    from radixlm.layers.quantization.layer import finish_loading, quantize_linears

    methods = {
        "fp8": lambda: Fp8Method(online=True),
        "int4": lambda: int4_method("gptq", GPTQ_CONFIG),
        "gguf-q4k": lambda: GGUFMethod((gguf_blocks.Q4_K,)),
    }
    holder = torch.nn.Module()
    with torch.device("meta"):
        holder.proj = ColumnParallelLinear(k, [n], False, TPGroup.single())
    holder = holder.to(torch.bfloat16)
    if method in methods:
        quantize_linears(holder, lambda name: methods[method](), torch.bfloat16)
    holder = holder.to_empty(device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        if method in methods:
            holder.proj.fill_dummy(gen)
            finish_loading(holder, torch.device("cuda"))
        else:
            holder.proj.weight.uniform_(-0.02, 0.02, generator=gen)
    return holder.proj


def graphed_ms(fn, calls: int = 20) -> float:
    """Milliseconds per call of `fn` replayed from one CUDA graph of `calls` calls (no launch
    overhead, as in the decode step's graph)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return time_back_to_back(graph.replay, 20) / calls


def kernels(shape: str, copy_gbps: float) -> dict:
    """Each method's batch-1 matmul alone per linear shape (in a CUDA graph): µs and % of copy bandwidth."""
    out: dict[str, dict] = {}
    for name, (n, k) in linear_shapes(shape).items():
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        for method in METHODS:
            layer = kernel_layer(method, n, k)
            nbytes = sum(p.numel() * p.element_size() for p in layer.parameters())
            with torch.no_grad():
                for _ in range(3):
                    layer(x)
                ms = graphed_ms(lambda: layer(x))
            gbps = nbytes / (ms / 1e3) / 1e9
            out[f"{name}/{method}"] = {"us": 1e3 * ms, "gbps": gbps, "pct_copy": 100 * gbps / copy_gbps}
            print(
                f"  {shape} {name:8s} [{n:6d} x {k:6d}] {method:9s} {1e3 * ms:8.1f} us {gbps:8.0f} GB/s "
                f"{100 * gbps / copy_gbps:5.1f} % of copy",
                flush=True,
            )
            layer = None
    torch.cuda.empty_cache()
    return out


def offline(shape: str, a: argparse.Namespace) -> dict:
    prompts = random_prompts(a.num_prompts, a.input_len)
    res = {}
    for method in ("bf16", "fp8"):
        kwargs, _ = METHODS[method]
        tok_s, _detail = radixlm_offline(model_dir(shape, None), prompts, a.output_len, **kwargs)
        res[method] = tok_s
        print(f"  offline {shape} {method}: {tok_s:,.0f} output tok/s", flush=True)
        torch.cuda.empty_cache()
    res["fp8_speedup"] = res["fp8"] / res["bf16"]
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small offline run (1B only): under ~4 minutes")
    parser.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-3-8b"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--context", type=int, default=128, help="tokens in the KV cache of the decode step")
    parser.add_argument("--num-prompts", type=int, default=2000)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--offline-shapes", nargs="*", default=None, help="no names: skip the offline run")
    parser.add_argument("--json", default=None, help="write every figure here")
    a = parser.parse_args()
    if a.quick:
        a.num_prompts, a.input_len, a.output_len = 128, 256, 64
        a.offline_shapes = ["llama-3.2-1b"] if a.offline_shapes is None else a.offline_shapes
    copy_gbps = copy_bandwidth() / 1e9
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {copy_gbps:,.0f} GB/s (read + write)", flush=True)
    results: dict = {"device": torch.cuda.get_device_name(), "copy_gbps": copy_gbps, "args": vars(a)}
    for shape in a.shapes:
        rows = {m: decode(shape, m, a.context) for m in a.methods}
        for m, r in rows.items():
            speedup = r["tok_s"] / rows["bf16"]["tok_s"] if "bf16" in rows else float("nan")
            read_gbps = r["weight_gb"] / (r["ms_per_step"] / 1e3)
            print(
                f"{shape} batch-1 decode {m:9s}: {r['ms_per_step']:6.3f} ms/step {r['tok_s']:7.1f} tok/s "
                f"x{speedup:4.2f} vs bf16; weights {r['weight_gb']:5.2f} GB -> {read_gbps:6.0f} GB/s "
                f"({100 * read_gbps / copy_gbps:4.1f} % of copy)",
                flush=True,
            )
        results[shape] = {"decode": rows, "kernels": kernels(shape, copy_gbps)}
    for shape in a.shapes if a.offline_shapes is None else a.offline_shapes:
        results.setdefault(shape, {})["offline"] = offline(shape, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
