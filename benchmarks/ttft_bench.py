"""Idle time to first token against the device time of the same prefill forward.

Per model shape (dummy weights, bf16) and prompt length (128, 1,024 and 8,192 tokens):

- **TTFT**: one request alone on an idle `Engine` (no other request queued or running), from
  `generate` called to its first (only) token back, median of `--reps` distinct uncached prompts
  (each one's `cached_tokens` is checked to be 0), after one warm-up request per length.
- **GPU**: the device time of the same extend forward (`ModelRunner.forward` of one request of
  that many tokens, logits for its last row), from CUDA events around the forward issued while
  the GPU spins in `torch.cuda._sleep`, so every kernel is queued before the first one starts and
  the events time the kernels back to back, without host gaps.
- **host**: the host time to issue that forward (under the same spin: a forward that waited for
  the device inside would show the spin's length here and is flagged).
- **idle fwd**: the same forward timed by events from an idle GPU (host issue and device time
  as they overlap in an eager prefill).
- the embedding lookup alone (GPU and host microseconds per call) at each length;
- where the host time of one eager extend forward goes (`--profile-length`, default 1,024
  tokens): cProfile's top functions by own time per forward, and the device kernels per forward.

The ratio TTFT / GPU is the acceptance figure of issue 25 (<= 1.5 at 1,024 tokens).

    python benchmarks/ttft_bench.py                          # both shapes: ~2 min on an H100
    python benchmarks/ttft_bench.py --shapes llama-3.2-1b --json ttft.json
    python benchmarks/ttft_bench.py --tiny                   # CPU smoke run: tiny shape, 16/32/64 tokens
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import statistics
import sys
import time
from typing import Any, Callable, Optional

import torch
from gpu_bench import SHAPES, model_dir

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=512,
)
LENGTHS = (128, 1024, 8192)
TINY_LENGTHS = (16, 32, 64)
EMBED_CALLS = 20


def prompt(length: int, vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(length)]


def sleep_cycles_per_ms() -> float:
    """GPU clock cycles `torch.cuda._sleep` spins per millisecond on this device."""
    cycles = 10_000_000
    torch.cuda._sleep(cycles)  # first call loads the kernel
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    torch.cuda.synchronize()
    return cycles / start.elapsed_time(end)


def queued_time(fn: Callable[[], Any], spin_ms: float, cycles_per_ms: float) -> tuple[float, float]:
    """(device ms, host ms) of `fn`: issued while the GPU spins for `spin_ms`, so its kernels run
    back to back after the spin; the host ms is the time `fn` took to return."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(spin_ms * cycles_per_ms))
    start.record()
    t0 = time.perf_counter()
    fn()
    host = (time.perf_counter() - t0) * 1e3
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), host


def idle_time(fn: Callable[[], Any]) -> float:
    """Milliseconds from `fn` called on an idle device to its last kernel done (wall time on a CPU)."""
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def make_runner(path: str, max_len: int, dtype: str, **kwargs: Any) -> Any:
    from radixlm.config.server_args import ServerArgs
    from radixlm.executor.model_runner import ModelRunner

    args = ServerArgs(
        model_path=path,
        load_format="dummy",
        dtype=dtype,
        max_total_tokens=max_len + 64,
        max_running_requests=4,
        disable_cuda_graph=True,
        context_length=max_len + 16,
        max_prefill_tokens=max_len,
        **kwargs,
    )
    return ModelRunner(args)


def forward_times(runner: Any, length: int, vocab: int, reps: int) -> dict[str, Optional[float]]:
    """The extend forward of one `length`-token request: median device, host and idle ms, and
    whether the host waited for the device inside the forward (`host_waited`)."""
    from radixlm.executor.memory_profile import warmup_batch

    batch = warmup_batch(runner.req_to_token_pool.table, 1, length, runner.device)
    batch.input_ids = torch.tensor(prompt(length, vocab, 7), device=runner.device)
    run = lambda: runner.forward(batch)  # noqa: E731  (rewrites the same slots each time)
    run()
    idle = statistics.median(idle_time(run) for _ in range(reps))
    if not torch.cuda.is_available():
        return {"gpu_ms": None, "host_ms": idle, "idle_forward_ms": idle, "host_waited": None}
    per_ms = sleep_cycles_per_ms()
    spin = 2 * idle + 20.0
    pairs = [queued_time(run, spin, per_ms) for _ in range(reps)]
    gpu, host = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return {"gpu_ms": gpu, "host_ms": host, "idle_forward_ms": idle, "host_waited": host >= spin}


def embedding_times(runner: Any, length: int, vocab: int) -> dict[str, Optional[float]]:
    """Microseconds per embedding lookup of `length` ids: device and host (CUDA), or wall (CPU)."""
    embed = runner.model.model.embed_tokens
    ids = torch.tensor(prompt(length, vocab, 11), device=runner.device)

    def calls() -> None:
        for _ in range(EMBED_CALLS):
            embed(ids)

    with torch.inference_mode():
        calls()
        if not torch.cuda.is_available():
            return {"gpu_us": None, "host_us": idle_time(calls) * 1e3 / EMBED_CALLS}
        gpu, host = queued_time(calls, 20.0, sleep_cycles_per_ms())
    return {"gpu_us": gpu * 1e3 / EMBED_CALLS, "host_us": host * 1e3 / EMBED_CALLS}


def host_profile(runner: Any, length: int, vocab: int, top: int = 15, steps: int = 5) -> dict:
    """Where the host time of one eager extend forward of `length` tokens goes: cProfile's top
    functions by own time (calls and microseconds per forward, over `steps` forwards after a
    warm-up one), and on CUDA the device kernels per forward (torch.profiler)."""
    import cProfile
    import pstats

    from radixlm.executor.memory_profile import warmup_batch

    batch = warmup_batch(runner.req_to_token_pool.table, 1, length, runner.device)
    batch.input_ids = torch.tensor(prompt(length, vocab, 7), device=runner.device)
    runner.forward(batch)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        runner.forward(batch)
    prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (primitive calls, calls, own s, cumulative s, callers)
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    funcs = [
        {"function": f"{os.path.basename(f)}:{line}({name})", "calls": v[1] / steps, "own_us": 1e6 * v[2] / steps}
        for (f, line, name), v in rows
    ]
    out: dict = {"length": length, "top_functions": funcs, "kernels_per_forward": None}
    if torch.cuda.is_available():
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as tprof:
                for _ in range(steps):
                    runner.forward(batch)
                torch.cuda.synchronize()
            kernels = [e for e in tprof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            out["kernels_per_forward"] = len(kernels) / steps
        except RuntimeError as exc:  # no CUPTI here: the count is left out, the rest stands
            print(f"device kernel count unavailable: {exc}", flush=True)
    return out


def engine_ttft(path: str, lengths: tuple[int, ...], vocab: int, reps: int, **engine_kwargs: Any) -> dict[int, list]:
    """Per length, the ms from `generate` called to its one token back, for `reps` distinct
    prompts sent one at a time to an otherwise idle engine (each after a 50 ms pause)."""
    import radixlm

    params = {"max_new_tokens": 1, "ignore_eos": True, "temperature": 0}
    out: dict[int, list] = {}
    with radixlm.Engine(path, skip_tokenizer_init=True, log_level="warning", **engine_kwargs) as engine:
        for length in lengths:  # kernels compiled and tuned for this length before timing
            engine.generate(input_ids=prompt(length, vocab, 1000 + length), sampling_params=params)
        for length in lengths:
            out[length] = []
            for rep in range(reps):
                ids = prompt(length, vocab, 10_000 * length + rep)
                time.sleep(0.05)
                t0 = time.perf_counter()
                res = engine.generate(input_ids=ids, sampling_params=params)
                ms = (time.perf_counter() - t0) * 1e3
                meta = res["meta_info"]
                if meta["cached_tokens"] != 0 or meta["prompt_tokens"] != length:
                    raise RuntimeError(f"TTFT prompt not fresh: {meta}")
                out[length].append(ms)
    return out


def run_shape(shape: str, a: argparse.Namespace) -> dict:
    overrides = TINY if a.tiny else {"max_position_embeddings": max(a.lengths) + 64}
    path = model_dir(shape, **overrides)
    vocab = overrides.get("vocab_size", SHAPES[shape]["vocab_size"])
    dtype = "float32" if a.tiny else "bfloat16"
    max_len = max(a.lengths)
    cpu = {"num_threads": 1} if a.tiny else {}  # a smoke run: no thread contention on a shared CPU
    runner = make_runner(path, max_len, dtype, **cpu)
    forwards = {n: forward_times(runner, n, vocab, a.reps) for n in a.lengths}
    embeds = {n: embedding_times(runner, n, vocab) for n in a.lengths}
    profile = host_profile(runner, a.profile_length, vocab) if a.profile_length else None
    runner = None  # its device memory goes back before the engine starts
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    engine_kwargs: dict[str, Any] = dict(load_format="dummy", dtype=dtype, context_length=max_len + 16)
    # On the GPU the server's defaults but for fewer decode graphs (quicker start; a TTFT never
    # replays one); the CPU smoke run keeps its warm-up prefill small.
    if torch.cuda.is_available():
        engine_kwargs.update(cuda_graph_max_bs=8)
    else:
        engine_kwargs.update(max_prefill_tokens=max_len, **cpu)
    ttfts = engine_ttft(path, tuple(a.lengths), vocab, a.reps, **engine_kwargs)
    rows = {}
    for n in a.lengths:
        ttft = statistics.median(ttfts[n])
        base = forwards[n]["gpu_ms"] or forwards[n]["idle_forward_ms"]
        rows[n] = {
            "ttft_ms": ttft,
            "ttft_all_ms": ttfts[n],
            **forwards[n],
            "embedding": embeds[n],
            "ttft_over_gpu": ttft / base,
        }
    return {"rows": rows, "host_profile": profile}


def print_profile(shape: str, profile: dict) -> None:
    print(
        f"\n{shape}: host time of one eager extend forward of {profile['length']} tokens, top functions by own "
        f"time (cProfile; device kernels per forward: {profile['kernels_per_forward']})"
    )
    print("| function | calls / forward | own us / forward |")
    print("|---|---|---|")
    for f in profile["top_functions"]:
        print(f"| {f['function']} | {f['calls']:.0f} | {f['own_us']:.0f} |", flush=True)


def print_rows(shape: str, rows: dict) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"\n{shape}: idle TTFT vs the extend forward (GPU = queued device time; CPU: wall time)")
    print("| tokens | TTFT ms (median) | GPU ms | host ms | idle fwd ms | TTFT / GPU | embed GPU us | embed host us |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        e = r["embedding"]
        waited = " (host waited)" if r["host_waited"] else ""
        print(
            f"| {n} | {r['ttft_ms']:.2f} | {fmt(r['gpu_ms'])} | {fmt(r['host_ms'])}{waited} | "
            f"{r['idle_forward_ms']:.2f} | {r['ttft_over_gpu']:.2f} | {fmt(e['gpu_us'])} | {fmt(e['host_us'])} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-3-8b"], choices=sorted(SHAPES))
    ap.add_argument("--lengths", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=7, help="timed prompts per length (median reported)")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape on whatever device (CPU smoke run)")
    ap.add_argument("--profile-length", type=int, default=None, help="host profile at this length (0: none)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    a.lengths = a.lengths or list(TINY_LENGTHS if a.tiny else LENGTHS)
    if a.profile_length is None:
        a.profile_length = 32 if a.tiny else 1024
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM closes the engine
    if a.tiny:
        a.shapes = a.shapes[:1]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results: dict = {"device": device}
    for shape in a.shapes:
        label = "tiny" if a.tiny else shape
        results[label] = result = run_shape(shape, a)
        print_rows(label, result["rows"])
        if result["host_profile"]:
            print_profile(label, result["host_profile"])
    print(f"device: {device}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
