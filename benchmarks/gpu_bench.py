"""GPU benchmark of the fast path (Triton attention + CUDA graphs), dummy weights, bf16.

Prints, in one run: the measured device copy bandwidth; per model shape the batch-1 decode
step time and achieved weight-read bandwidth (radixlm vs HF transformers `generate`), the step
timed both back to back (the GPU's time per step; the bandwidth figure) and alone from an idle
GPU (adding the host's ~50 µs of input copies and graph launch, plus launch latency); offline
throughput on random prompts (radixlm vs HF's best batch); shared-prefix throughput with the
radix cache on vs off. Each offline run is also read against its FLOP + bandwidth bound
(`roofline.offline_bound` at the bf16 matmul peak and the copy bandwidth measured first).

    python benchmarks/gpu_bench.py --shapes llama-3.2-1b llama-3-8b --num-prompts 2000
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import torch
from extend_attn_bench import matmul_peak_tflops
from gpu_trace import GpuTrace
from roofline import offline_bound

SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
}


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the memory ceiling)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    return 2 * src.numel() / (time_cuda(lambda: dst.copy_(src), 20) / 1e3)


def time_cuda(fn, iters: int) -> float:
    """Median milliseconds of `fn` over `iters` runs, timed with CUDA events."""
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def model_dir(shape: str, **overrides: object) -> str:
    """A temporary model directory holding the config of `shape` (fields in `overrides` replaced)."""
    from transformers import LlamaConfig

    path = tempfile.mkdtemp(prefix=f"{shape}-")
    LlamaConfig(**{**SHAPES[shape], **overrides}, torch_dtype="bfloat16").save_pretrained(path)
    return path


def radixlm_decode_step(path: str, context: int, graphs: bool, **server_kwargs) -> tuple[float, float, int]:
    """Batch-1 decode step at `context` tokens: ms of one step started on an idle GPU (the
    host's launch work in it), ms per step of 200 steps issued back to back (the GPU's own time:
    the host is ahead, as under overlap scheduling), and the weight bytes one step reads (each
    parameter once, but of an input embedding that is not also the LM head one row)."""
    runner, decode = decode_setup(path, context, graphs, **server_kwargs)
    ms = time_cuda(lambda: runner.forward(decode), 50)
    pipelined = time_back_to_back(lambda: runner.forward(decode), 200)
    weights = step_weight_bytes(runner.model)
    runner = None  # free its GPU memory before the next shape
    torch.cuda.empty_cache()
    return ms, pipelined, weights


def step_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights a batch-1 decode step reads: each distinct parameter once, but of an
    input embedding (`model.model.embed_tokens`) that is not also the LM head only one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # shared ones once
    embed = model.model.embed_tokens.weight
    if not model.tied:
        total -= (embed.shape[0] - 1) * embed.shape[1] * embed.element_size()
    return total


def time_back_to_back(fn, iters: int) -> float:
    """Milliseconds per call of `iters` calls issued without waiting, timed with CUDA events."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def decode_setup(path: str, context: int, graphs: bool, **server_kwargs) -> tuple[object, object]:
    """A ModelRunner with one request prefilled to `context` tokens, and its batch-1 decode
    batch, already run five times (graphs captured, kernels compiled)."""
    from radixlm.config.server_args import ServerArgs
    from radixlm.executor.model_runner import ModelRunner
    from radixlm.forward.batch import ForwardBatch, ForwardMode

    args = ServerArgs(
        model_path=path,
        load_format="dummy",
        dtype="bfloat16",
        max_total_tokens=8192,
        max_running_requests=8,
        cuda_graph_max_bs=8,
        disable_cuda_graph=not graphs,
        context_length=4096,
        **server_kwargs,
    )
    runner = ModelRunner(args)
    table = runner.req_to_token_pool.table
    table[0, : context + 1] = torch.arange(1, context + 2, device="cuda")
    dev = dict(device="cuda", dtype=torch.int64)
    prefill = ForwardBatch(
        ForwardMode.EXTEND,
        torch.randint(0, 1000, (context,), **dev),
        torch.arange(context, **dev),
        table[0, :context],
        torch.zeros(1, **dev),
        torch.tensor([context], **dev),
        [context],
        [0],
        [context],
        torch.tensor([context - 1], **dev),
        table,
    )
    runner.forward(prefill)
    decode = ForwardBatch(
        ForwardMode.DECODE,
        torch.tensor([5], **dev),
        torch.tensor([context], **dev),
        table[0, context : context + 1],
        torch.zeros(1, **dev),
        torch.tensor([context + 1], **dev),
        [context + 1],
        [context],
        [1],
        torch.zeros(1, **dev),
        table,
    )
    for _ in range(5):
        runner.forward(decode)
    return runner, decode


def hf_generate(path: str, prompts: list[list[int]], out_len: int, batch: int) -> float:
    """HF transformers `generate` output tok/s over `prompts` in batches of `batch` (same lengths)."""
    model = _hf_model(path)
    model.generate(torch.tensor(prompts[:1], device="cuda"), max_new_tokens=4, do_sample=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        ids = torch.tensor(prompts[i : i + batch], device="cuda")
        model.generate(ids, max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    rate = len(prompts) * out_len / (time.perf_counter() - start)
    del model
    torch.cuda.empty_cache()
    return rate


def _hf_model(path: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None
    return model.eval()


def radixlm_offline(path: str, prompts: list[list[int]], out_len: int, **kwargs) -> tuple[float, dict]:
    """Output tok/s of one Engine.generate call over all prompts (engine warmed up first)."""
    import radixlm

    with radixlm.Engine(
        path,
        load_format="dummy",
        dtype="bfloat16",
        skip_tokenizer_init=True,
        context_length=4096,
        log_level="warning",
        **kwargs,
    ) as engine:
        engine.generate(input_ids=prompts[:2], sampling_params={"max_new_tokens": 4, "ignore_eos": True})
        engine.flush_cache()
        start = time.perf_counter()
        outs = engine.generate(
            input_ids=prompts, sampling_params={"max_new_tokens": out_len, "ignore_eos": True, "temperature": 0}
        )
        elapsed = time.perf_counter() - start
        info = engine.get_server_info()
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    return tokens / elapsed, {
        "seconds": elapsed,
        "output_tokens": tokens,
        "cached_tokens": cached,
        "step_times": info["step_times"],
        "overlapped_steps": info["num_overlapped_steps"],
        "forward_steps": info["num_forward_steps"],
        "kv_capacity_tokens": info["max_total_num_tokens"],
    }


def random_prompts(n: int, length: int, seed: int = 0, prefix: list[int] | None = None) -> list[list[int]]:
    rng = random.Random(seed)
    return [(prefix or []) + [rng.randrange(100, 120000) for _ in range(length)] for _ in range(n)]


def shared_prefix_prompts(groups: int, per_group: int, prefix_len: int, question_len: int) -> list[list[int]]:
    out = []
    for g in range(groups):
        prefix = random_prompts(1, prefix_len, seed=1000 + g)[0]
        out += random_prompts(per_group, question_len, seed=g, prefix=prefix)
    random.Random(7).shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--num-prompts", type=int, default=2000)
    ap.add_argument("--hf-prompts", type=int, default=256)
    ap.add_argument("--hf-batches", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--shared-prefix-shape", default="llama-3.2-1b")
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--json", default=None)
    ap.add_argument("--sched-batch", type=int, default=256)
    ap.add_argument(
        "--offline-max-running",
        type=int,
        nargs="+",
        default=[None],
        help="offline runs at these --max-running-requests (CUDA graphs up to 512 rows; default: the engine's)",
    )
    ap.add_argument("--decode-compile", action="store_true", help="also time batch-1 decode with torch.compile")
    a = ap.parse_args()
    results: dict = {"device": torch.cuda.get_device_name(), "copy_GBps": copy_bandwidth() / 1e9}
    results["matmul_peak_TFLOPs"] = matmul_peak_tflops()
    print(
        f"device {results['device']}: copy bandwidth {results['copy_GBps']:.0f} GB/s (read+write), "
        f"bf16 matmul 8192^3 peak {results['matmul_peak_TFLOPs']:.0f} TFLOP/s",
        flush=True,
    )
    for shape in a.shapes:
        results[shape] = run_shape(shape, a, results["copy_GBps"], results["matmul_peak_TFLOPs"])
    if "shared" not in a.skip:
        results["shared_prefix"] = run_shared(a.shared_prefix_shape)
    print(json.dumps(results, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


def run_shape(shape: str, a: argparse.Namespace, copy_gbps: float, peak_tflops: float) -> dict:
    path = model_dir(shape)
    res: dict = {}
    if "decode" not in a.skip:
        ms_one, ms, weights = radixlm_decode_step(path, 256, graphs=True)
        ms_eager, _, _ = radixlm_decode_step(path, 256, graphs=False)
        bw = weights / (ms / 1e3) / 1e9
        if a.decode_compile:
            _, res["decode_compiled_ms"], _ = radixlm_decode_step(
                path, 256, graphs=True, enable_torch_compile=True, torch_compile_max_bs=8
            )
            print(f"{shape}: decode bs1 with --enable-torch-compile {res['decode_compiled_ms']:.2f} ms", flush=True)
        res.update(
            decode_ms=ms,
            decode_one_step_ms=ms_one,
            decode_eager_ms=ms_eager,
            weight_GB=weights / 1e9,
            achieved_GBps=bw,
            fraction_of_copy_bw=bw / copy_gbps,
        )
        hf = hf_generate(path, random_prompts(1, 128), 128, 1)
        res.update(hf_batch1_tok_s=hf, hf_batch1_GBps=hf * weights / 1e9)
        print(
            f"{shape}: decode bs1 {ms:.2f} ms per step back to back (one step from idle {ms_one:.2f}, "
            f"eager {ms_eager:.2f}) -> {bw:.0f} GB/s = "
            f"{100 * bw / copy_gbps:.0f}% of copy; HF generate bs1 {hf:.1f} tok/s = {hf * weights / 1e9:.0f} GB/s",
            flush=True,
        )
    if "sched" not in a.skip:
        res["scheduling"] = run_sched(path, a.sched_batch)
    if "offline" not in a.skip:
        prompts = random_prompts(a.num_prompts, 512)
        runs = {}
        for cap in a.offline_max_running:
            kw = {} if cap is None else {"max_running_requests": cap, "cuda_graph_max_bs": min(cap, 512)}
            rate, run = radixlm_offline(path, prompts, 256, **kw)
            run["bound"] = bound = run_bound(shape, prompts, 256, cap, run, copy_gbps, peak_tflops)
            runs[str(cap or "default")] = rate, run
            print(
                f"{shape}: offline max_running {cap or 'default'}: {rate:.0f} tok/s in {run['seconds']:.1f} s; "
                f"bound {bound['bound_s']:.1f} s (prefill {bound['prefill_s']:.1f} + decode {bound['decode_s']:.1f}, "
                f"{bound['running']} running) -> {bound['pct_of_bound']:.0f}% of the bound",
                flush=True,
            )
        ours, info = max(runs.values(), key=lambda r: r[0])
        info = {
            **info,
            "by_max_running": {k: r[0] for k, r in runs.items()},
            "pct_of_bound_by_max_running": {k: r[1]["bound"]["pct_of_bound"] for k, r in runs.items()},
        }
        hf_rates = {b: hf_generate(path, prompts[: a.hf_prompts], 256, b) for b in a.hf_batches}
        best = max(hf_rates.values())
        pct = info["bound"]["pct_of_bound"]
        res.update(
            offline_tok_s=ours, offline=info, offline_pct_of_bound=pct, hf_tok_s=hf_rates, ratio_vs_hf_best=ours / best
        )
        print(
            f"{shape}: offline {a.num_prompts}x(512 in, 256 out): radixlm {ours:.0f} tok/s = {pct:.0f}% of its bound; "
            f"HF best {best:.0f} tok/s {hf_rates}; ratio {ours / best:.1f}x",
            flush=True,
        )
    return res


def run_bound(
    shape: str, prompts: list[list[int]], out_len: int, cap: int | None, run: dict, copy_gbps: float, peak_tflops: float
) -> dict:
    """The offline run's FLOP + bandwidth bound (bf16) in seconds, its prefill and decode parts,
    and the run's wall time as a % of it (bound / measured). Waves hold the engine's max running
    requests (`cap`, or its default), fewer where its KV pool holds fewer whole requests."""
    from radixlm.executor.model_runner import DEFAULT_MAX_RUNNING

    lens = [len(p) for p in prompts]
    running = max(1, min(cap or DEFAULT_MAX_RUNNING, run["kv_capacity_tokens"] // (max(lens) + out_len)))
    r = offline_bound(SHAPES[shape], lens, out_len, running, 2, peak_tflops * 1e12, copy_gbps * 1e9)
    return {
        "bound_s": r.seconds,
        "prefill_s": r.prefill_s,
        "decode_s": r.decode_s,
        "running": running,
        "decode_steps": r.decode_steps,
        "flop_bound_steps": r.flop_bound_steps,
        "pct_of_bound": 100 * r.seconds / run["seconds"],
    }


def run_sched(path: str, batch: int) -> dict:
    """Host time per decode step at `batch` running requests, without and with overlap: the
    CPU work (schedule + launch + process) and how much of it the overlap hides from the wall."""
    prompts = random_prompts(batch, 128, seed=3)
    out = {}
    for label, kwargs in (("serial", {"disable_overlap_schedule": True}), ("overlap", {})):
        with GpuTrace() as trace:  # SM clock and power: does one mode run the GPU slower?
            _, info = radixlm_offline(path, prompts, 256, max_running_requests=batch, cuda_graph_max_bs=batch, **kwargs)
        dec = info["step_times"]["decode"]
        n = dec["steps"]
        out[label] = {
            "decode_steps": n,
            "mean_batch": dec["rows"] / n,
            **{f"{k}_ms": 1e3 * dec[k] / n for k in ("schedule", "launch", "device_wait", "process")},
            "wall_ms": 1e3 * sum(dec[k] for k in ("schedule", "launch", "device_wait", "process")) / n,
            "overlapped_steps": info["overlapped_steps"],
            "gpu_trace": trace.summary(),
        }
    serial, overlap = out["serial"], out["overlap"]
    cpu = serial["schedule_ms"] + serial["launch_ms"] + serial["process_ms"]
    hidden = (serial["wall_ms"] - overlap["wall_ms"]) / cpu if cpu else 0.0
    out.update(cpu_ms_per_step=cpu, hidden_fraction=hidden)
    for label in ("serial", "overlap"):
        gpu = out[label]["gpu_trace"]
        if gpu:
            print(
                f"  {label}, {gpu['busy_samples']:.0f} samples at >= 90% utilization: SM clock mean "
                f"{gpu['sm_mhz_mean']:.0f} MHz (min {gpu['sm_mhz_min']:.0f}), power mean {gpu['power_w_mean']:.0f} W, "
                f"temperature mean {gpu['temp_c_mean']:.0f} C",
                flush=True,
            )
    print(
        f"scheduling at batch {batch}: CPU {cpu:.2f} ms/decode step (schedule {serial['schedule_ms']:.2f}, launch "
        f"{serial['launch_ms']:.2f}, process {serial['process_ms']:.2f}); wall {serial['wall_ms']:.2f} ms serial vs "
        f"{overlap['wall_ms']:.2f} ms overlapped -> {100 * hidden:.0f}% of the CPU time hidden",
        flush=True,
    )
    return out


def run_shared(shape: str) -> dict:
    path = model_dir(shape)
    prompts = shared_prefix_prompts(16, 64, 2048, 128)
    on, info_on = radixlm_offline(path, prompts, 128)
    off, info_off = radixlm_offline(path, prompts, 128, disable_radix_cache=True)
    print(
        f"shared prefix ({shape}, 16x64, 2048+128 in, 128 out): cache on {on:.0f} tok/s, off {off:.0f} tok/s, "
        f"ratio {on / off:.1f}x",
        flush=True,
    )
    return {"on_tok_s": on, "off_tok_s": off, "ratio": on / off, "on": info_on, "off": info_off}


if __name__ == "__main__":
    main()
