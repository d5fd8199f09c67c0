"""The CPU serving figures of issue 29: radixlm `Engine()` defaults against HF `generate` and llama.cpp.

    python benchmarks/cpu_bench.py                 # the full run (~10 minutes on 2 cores)
    python benchmarks/cpu_bench.py --quick         # a smoke run
    python benchmarks/cpu_bench.py --only-b --quant-flag num_threads=1   # (b) alone, radixlm also at one thread
    PYTHONPATH=/tmp/llama-site python benchmarks/cpu_bench.py   # with llama-cpp-python importable

All three run the bundled SmolLM2-135M-Instruct (Q4_1 GGUF): radixlm with `Engine()` defaults
(on the CPU: the Q4_1 linears kept in their blocks, float32 activations; `model_loader.weight_format`),
HF on the file's dequantized tensors (float32 and bfloat16, the best of its batch sizes counts),
llama.cpp on the file itself. Greedy, EOS ignored, random prompt ids in [100, vocab) from a fixed seed.

(a) 32 prompts x 55 in x 32 out, output tok/s over the whole call, read against the GEMM ceiling
    (model FLOPs / best float32 or bfloat16 GEMM rate measured here, whichever the run used);
(b) one request, 55 in, 64 out, output tok/s over the whole request, read against the weight bytes
    one decode step must read (the GGUF file with its blocks kept, else the dequantized tensors)
    over the measured copy bandwidth;
(c) 64 prompts sharing a 512-token prefix (+32 unique, 32 out): radix cache on vs off.
`--quant-flag` (repeatable) names an extra radixlm engine for (a) and (b) (ServerArgs field=value[,...], digits
read as integers) shown beside the defaults; without one, `gguf_cpu_activations=int8` (the opt-in int8 dots).
`quantization=none` shows the dequantized float model, `num_threads=1` the defaults on one core (without
`--threads` the defaults use every core, as `Engine()` does). `--only-b` runs (b) alone.
Every figure also as output tokens per CPU-second of the processes involved (psutil: this one
and the Engine's children), the fair figure when the machine is shared and oversubscribed.
`--alternations N` runs radixlm's default and the `--quant-flag` engines N times each, alternately,
and reports each figure's median (the machine may be shared: timings swing between runs).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # radixlm from this checkout, not an installed copy
sys.path.insert(1, HERE)

import torch  # noqa: E402
from hf_peer import build_hf_peer, hf_generate  # noqa: E402
from offline_throughput import random_prompts  # noqa: E402
from throughput_measure import model_shape  # noqa: E402

BATCH_A, IN_A, OUT_A = 32, 55, 32
IN_B, OUT_B = 55, 64
PREFIX_C, SUFFIX_C, COUNT_C, OUT_C = 512, 32, 64, 32
TARGET_A, TARGET_B_HF, TARGET_B_LLAMA = 3.0, 2.0, 0.8
DEFAULTS = "Engine() defaults"  # the label of the radixlm rows the targets apply to
INT8 = "gguf_cpu_activations=int8"  # the extra engine shown when no --quant-flag is given


@dataclass(frozen=True)
class Figure:
    """One measured system: output tokens over wall seconds, with what it was run as."""

    name: str
    seconds: float
    tokens: int
    cpu_seconds: float = 0.0  # CPU time of this process and its children (the Engine's) over the run

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tok_cpu_s(self) -> float:
        """Output tokens per CPU-second: what the run would do alone on its threads (on a shared,
        oversubscribed machine the wall figure mostly measures the other load)."""
        return self.tokens / self.cpu_seconds if self.cpu_seconds else float("nan")


# -- ceilings ----------------------------------------------------------------------------------
def gemm_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a [size]^3 matmul in `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def copy_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Best GB/s (bytes read + written) of copying a `mb` MB float32 buffer."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _shown(figure: Figure) -> Figure:
    """Print a figure as soon as it is measured (a later failure keeps what was measured)."""
    print(
        f"  measured {figure.name}: {figure.seconds:.2f} s, {figure.tok_s:.1f} out tok/s, "
        f"{figure.tok_cpu_s:.1f} per CPU-s",
        flush=True,
    )
    return figure


def cpu_now() -> float:
    """CPU seconds (user + system) used so far by this process and its live children."""
    import psutil

    me = psutil.Process()
    procs = [me] + me.children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # a child that just exited
            continue
        total += times.user + times.system
    return total


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- radixlm -----------------------------------------------------------------------------------
def radixlm_runs(
    plans: list[tuple[str, list[list[list[int]]], int]], label: str = DEFAULTS, **engine_args: Any
) -> list[Figure]:
    """One `Engine(**engine_args)` (defaults otherwise); after a warm-up, each plan (name, calls
    of prompts, output length) is timed with the radix cache flushed before it; figures are named
    `radixlm <label> <plan name>`."""
    import radixlm

    figures = []
    with radixlm.Engine(log_level="warning", **engine_args) as engine:
        params = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}
        engine.generate(input_ids=[[7] * 20, [9] * 30], sampling_params=params)
        for name, calls, out_len in plans:
            engine.flush_cache()
            params = {"temperature": 0, "max_new_tokens": out_len, "ignore_eos": True}
            start, cpu = time.perf_counter(), cpu_now()
            outs = [o for prompts in calls for o in engine.generate(input_ids=prompts, sampling_params=params)]
            seconds, cpu = time.perf_counter() - start, cpu_now() - cpu
            tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
            figures.append(_shown(Figure(f"radixlm {label} {name}", seconds, tokens, cpu)))
    return figures


def alternated(
    plans: list[tuple[str, list[list[list[int]]], int]],
    runs: int,
    extras: list[dict[str, Any]],
    common: dict[str, Any],
) -> tuple[list[Figure], list[Figure]]:
    """`runs` alternations of radixlm's defaults then an engine per dict of `extras` (its figures
    named after it) over the same plans, all with `common`; each figure's median."""
    ours: list[list[Figure]] = []
    theirs: list[list[list[Figure]]] = [[] for _ in extras]
    for _ in range(runs):
        ours.append(radixlm_runs(plans, **common))
        for extra, runs_of in zip(extras, theirs):
            tag = " ".join(f"{k}={v}" for k, v in extra.items())
            runs_of.append(radixlm_runs(plans, tag, **{**common, **extra}))
    return _medians(ours), [f for runs_of in theirs for f in _medians(runs_of)]


def _medians(runs: list[list[Figure]]) -> list[Figure]:
    """Per figure (same position in every run), the run with the median seconds."""
    if not runs:
        return []
    return [sorted(same, key=lambda f: f.seconds)[len(same) // 2] for same in zip(*runs)]


# -- HF ----------------------------------------------------------------------------------------
def hf_figures(
    path: str, prompts: list[list[int]], out_len: int, batch_sizes: list[int], dtypes: list[torch.dtype]
) -> list[Figure]:
    """HF `generate` in each of `dtypes` at each batch size."""
    base = build_hf_peer(path)
    figures = []
    for dtype in dtypes:
        model = base.to(dtype)
        hf_generate(model, [p[:16] for p in prompts[:2]], 4, 2)
        for bs in batch_sizes:
            cpu = cpu_now()
            seconds = _timed(lambda: hf_generate(model, prompts, out_len, bs))
            name = f"HF {str(dtype).split('.')[-1]} bs={bs}"
            figures.append(_shown(Figure(name, seconds, len(prompts) * out_len, cpu_now() - cpu)))
    return figures


# -- llama.cpp ---------------------------------------------------------------------------------
def llama_cpp_figures(path: str, prompt: list[int], out_len: int, threads: list[int]) -> list[Figure]:
    """llama-cpp-python on the GGUF file: one request, greedy (top-k 1), EOS ignored, per thread count."""
    from llama_cpp import Llama

    figures = []
    for n in threads:
        llm = Llama(model_path=path, n_threads=n, n_threads_batch=n, n_ctx=512, n_batch=512, verbose=False)
        _llama_generate(llm, prompt[:8], 4)
        start, cpu = time.perf_counter(), cpu_now()
        _llama_generate(llm, prompt, out_len)
        figures.append(_shown(Figure(f"llama.cpp threads={n}", time.perf_counter() - start, out_len, cpu_now() - cpu)))
    return figures


def _llama_generate(llm: Any, prompt: list[int], out_len: int) -> None:
    llm.reset()
    for i, _ in enumerate(llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True)):
        if i + 1 == out_len:
            break


# -- report ------------------------------------------------------------------------------------
def default_weights(path: str, common: dict[str, Any]) -> tuple[str, torch.dtype, int]:
    """(what `Engine(**common)` runs on this CPU, its dtype, the bytes of weights one batch-1 decode
    step reads), by the rule the Engine applies at start-up (`model_loader.weight_format`)."""
    from radixlm.config.server_args import ServerArgs
    from radixlm.model_loader.gguf_reader import GGUFCheckpoint
    from radixlm.model_loader.loader import load_model_config, resolve_dtype
    from radixlm.model_loader.weight_format import choose_quantization

    args, cpu = ServerArgs(model_path=path, **common), torch.device("cpu")
    config = load_model_config(path)
    quant = choose_quantization(args, config, cpu)
    dtype = resolve_dtype(args.dtype, config, cpu, quant)
    if quant == "gguf":  # the projections' and the head's blocks: the file, as llama.cpp reads it
        return "GGUF blocks kept", dtype, os.path.getsize(path)
    elements = sum(t.numel() for _, t in GGUFCheckpoint(path).tensors())  # tied LM head once
    return "dequantized", dtype, elements * torch.tensor([], dtype=dtype).element_size()


def engine_flags(flag: str) -> dict[str, Any]:
    """ServerArgs fields of one `--quant-flag` ("field=value[,field=value]"); digits become ints."""
    pairs = (kv.split("=", 1) for kv in flag.split(","))
    return {key: int(value) if value.isdigit() else value for key, value in pairs}


def best(figures: list[Figure], prefix: str) -> Figure:
    return max((f for f in figures if f.name.startswith(prefix)), key=lambda f: f.tok_s)


def report(lines: list[str], figures: list[Figure]) -> None:
    for f in figures:
        lines.append(f"  {f.name:<40} {f.seconds:8.2f} s {f.tok_s:9.1f} out tok/s {f.tok_cpu_s:9.1f} per CPU-s")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, no HF bf16 sweep")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--skip-cache", action="store_true", help="leave out (c) (the cache-off prefill takes minutes)")
    ap.add_argument("--only-b", action="store_true", help="(b) alone: no (a), no (c)")
    ap.add_argument("--llama-flags", default=os.environ.get("CMAKE_ARGS", "?"), help="the CMAKE_ARGS it was built with")
    ap.add_argument(
        "--quant-flag",
        action="append",
        default=None,
        help=f"an extra radixlm engine with these ServerArgs field=value[,field=value] (repeatable; default: {INT8})",
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of every system (default: torch's)")
    ap.add_argument("--alternations", type=int, default=1, help="radixlm runs (default, --quant-flag) alternated")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # HF here; radixlm's engines get num_threads
    from radixlm.config.bundled import bundled_model_path
    from radixlm.model_loader.gguf_reader import GGUFCheckpoint

    path = bundled_model_path()
    config = GGUFCheckpoint(path).config()
    shape = model_shape(config)
    vocab = config["vocab_size"]
    scale = 4 if args.quick else 1
    rng = random.Random(0)
    prompts_a = random_prompts(BATCH_A // scale, IN_A, vocab, rng)
    prompt_b = random_prompts(1, IN_B, vocab, rng)[0]
    prefix = random_prompts(1, PREFIX_C // scale, vocab, rng)[0]
    prompts_c = [prefix + s for s in random_prompts(COUNT_C // scale, SUFFIX_C, vocab, rng)]
    lines = [
        f"load average at start: {os.getloadavg()[0]:.2f}; threads {torch.get_num_threads()}; "
        f"radixlm figures: median of {args.alternations} alternated run(s)"
    ]
    print(lines[0], flush=True)
    gemm32, gemm16, bw = gemm_rate(torch.float32), gemm_rate(torch.bfloat16, 1024, 2), copy_bandwidth()
    print(f"  GEMM {gemm32:.0f} / {gemm16:.0f} GFLOP/s, copy {bw:.1f} GB/s", flush=True)
    lines.append(f"ceilings: GEMM float32 {gemm32:.0f} GFLOP/s, bfloat16 {gemm16:.0f} GFLOP/s; copy {bw:.1f} GB/s")

    plans = ([] if args.only_b else [("(a)", [prompts_a], OUT_A)]) + [("(b)", [[prompt_b]], OUT_B)]
    flags = [engine_flags(flag) for flag in args.quant_flag or [INT8]]
    args.skip_cache = args.skip_cache or args.only_b
    common = {"num_threads": args.threads} if args.threads else {}
    ours, extra = alternated(plans, args.alternations, flags, common)
    if not args.skip_cache:
        ours += radixlm_runs([("(c) cache on", [prompts_c], OUT_C)], **common)
    off = (
        []
        if args.skip_cache
        else radixlm_runs([("(c) cache off", [prompts_c], OUT_C)], disable_radix_cache=True, **common)
    )
    # HF in bfloat16 only where bf16 GEMMs are not slower than float32 ones: without native bf16
    # (AVX2-only CPUs) they run ~100x slower here and the sweep would take hours to lose.
    hf_dtypes = [torch.float32] + ([torch.bfloat16] if gemm16 >= gemm32 / 2 else [])
    if len(hf_dtypes) == 1:
        lines.append(f"HF bfloat16 not run: bf16 GEMM {gemm16:.1f} GFLOP/s vs float32 {gemm32:.0f} on this CPU")
    hf_a = [] if args.only_b else hf_figures(path, prompts_a, OUT_A, [8, 32] if not args.quick else [8], hf_dtypes)
    hf_b = hf_figures(path, [prompt_b], OUT_B, [1], hf_dtypes)
    llama = [] if args.skip_llama_cpp else llama_cpp_figures(path, prompt_b, OUT_B, [1, 2])
    weights, dtype, step_bytes = default_weights(path, common)
    flops_a = shape.flops(sum(map(len, prompts_a)), len(prompts_a) * (OUT_A - 1), len(prompts_a) * OUT_A) / 1e9
    by_name = {f.name: f for f in ours + off + extra}
    a, b = by_name.get(f"radixlm {DEFAULTS} (a)"), by_name[f"radixlm {DEFAULTS} (b)"]
    rate = gemm16 if dtype == torch.bfloat16 else gemm32
    lines.append(f"radixlm {DEFAULTS}: weights {weights}, dtype auto = {dtype}")
    hf_best_a = None
    if a is not None:
        lines.append(f"(a) {len(prompts_a)} prompts x {IN_A} in x {OUT_A} out")
        report(lines, [a] + hf_a + [f for f in extra if "(a)" in f.name])
        hf_best_a = best(hf_a, "HF")
        lines.append(
            f"  radixlm defaults {a.tok_s:.1f} tok/s = {flops_a / a.seconds:.1f} GFLOP/s = "
            f"{100 * flops_a / a.seconds / rate:.0f}% of the {rate:.0f} GFLOP/s GEMM ceiling; "
            f"{a.tok_s / hf_best_a.tok_s:.2f}x HF's best ({hf_best_a.name}; target {TARGET_A:.0f}x)"
        )
    lines.append(f"(b) one request, {IN_B} in x {OUT_B} out")
    report(lines, [b] + hf_b + llama + [f for f in extra if "(b)" in f.name])
    hf_best_b = best(hf_b, "HF")
    ceiling_b = bw * 1e9 / step_bytes
    lines.append(
        f"  radixlm defaults {b.tok_s:.1f} tok/s = {100 * b.tok_s / ceiling_b:.0f}% of {ceiling_b:.0f} tok/s "
        f"({step_bytes / 1e6:.0f} MB of weights per step / {bw:.1f} GB/s); {b.tok_s / hf_best_b.tok_s:.2f}x HF's "
        f"best ({hf_best_b.name}; target {TARGET_B_HF:.0f}x)"
    )
    for f in extra:
        base, hf_best = (a, hf_best_a) if "(a)" in f.name else (b, hf_best_b)
        lines.append(
            f"  {f.name}: {f.tok_s:.1f} tok/s = {f.tok_s / base.tok_s:.2f}x radixlm's default, "
            f"{f.tok_s / hf_best.tok_s:.2f}x HF's best"
        )
    if llama:
        best_llama = best(llama, "llama.cpp")
        gguf_bytes = os.path.getsize(path)
        lines.append(
            f"  llama.cpp best {best_llama.tok_s:.1f} tok/s ({best_llama.name}; built with {args.llama_flags}) = "
            f"{100 * best_llama.tok_s * gguf_bytes / 1e9 / bw:.0f}% of its {bw * 1e9 / gguf_bytes:.0f} tok/s "
            f"({gguf_bytes / 1e6:.0f} MB file); radixlm defaults / llama.cpp = {b.tok_s / best_llama.tok_s:.2f} "
            f"(target {TARGET_B_LLAMA})"
        )
        for f in extra:
            if "(b)" in f.name:
                lines.append(f"  {f.name} / llama.cpp = {f.tok_s / best_llama.tok_s:.2f} (target {TARGET_B_LLAMA})")
    hf_cpu_b = max((f for f in hf_b), key=lambda f: f.tok_cpu_s)
    llama_cpu_b = max(llama, key=lambda f: f.tok_cpu_s) if llama else None
    for f in [b] + [f for f in extra if "(b)" in f.name]:
        versus = f", {f.tok_cpu_s / llama_cpu_b.tok_cpu_s:.2f}x llama.cpp's" if llama_cpu_b else ""
        lines.append(
            f"  per CPU-second: {f.name} {f.tok_cpu_s:.1f} = {f.tok_cpu_s / hf_cpu_b.tok_cpu_s:.2f}x HF's best "
            f"({hf_cpu_b.name} {hf_cpu_b.tok_cpu_s:.1f}){versus}"
        )
    if not args.skip_cache:
        on, cold = by_name[f"radixlm {DEFAULTS} (c) cache on"], by_name[f"radixlm {DEFAULTS} (c) cache off"]
        lines.append(f"(c) {len(prompts_c)} prompts = {len(prefix)} shared + {SUFFIX_C} unique, {OUT_C} out")
        report(lines, [on, cold])
        lines.append(f"  radix cache gain: {on.tok_s / cold.tok_s:.2f}x")
    lines.append(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
