"""`python -m radixlm.bench_one_batch`: the latency of one static batch, no server, no scheduler.

For every (batch size, input length, output length): one prefill of the whole batch, then
`output_len - 1` greedy decode steps, straight through `ModelRunner.forward` on ForwardBatches built
here (request i owns row i of the req-to-token table and a contiguous run of KV slots). Prints
SGLang's lines (prefill latency / throughput, median decode latency / throughput, total), and for
decode the achieved memory bandwidth (weights + the KV read that step) and compute rate against
ceilings measured in the same run: a large copy (read + write bytes / s) and a large matmul.
FLOPs count the weight matmuls only (2 x weights x tokens, the LM head on the sampled rows only;
attention scores and values are left out), so they understate long-context steps.

    python -m radixlm.bench_one_batch --batch-size 1 8 32 --input-len 256 --output-len 32
    python -m radixlm.bench_one_batch --model-path cfg_dir --load-format dummy --dtype bfloat16
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn

from radixlm.bench.metrics import append_jsonl
from radixlm.config.server_args import ServerArgs
from radixlm.executor.model_runner import ModelRunner
from radixlm.forward.batch import ForwardBatch, ForwardMode


@dataclass(frozen=True)
class Ceilings:
    """Hardware ceilings measured in this process: copy GB/s (read + write) and matmul GFLOP/s."""

    copy_gbps: float
    matmul_gflops: float


@dataclass(frozen=True)
class RunResult:
    """One (batch, input, output) run; latencies in seconds, bandwidth in GB/s."""

    batch_size: int
    input_len: int
    output_len: int
    prefill_latency: float
    prefill_throughput: float
    median_decode_latency: float
    median_decode_throughput: float
    total_latency: float
    overall_throughput: float
    weight_bytes: int
    kv_bytes_median_step: int
    decode_gbps: float
    decode_gflops: float
    prefill_gflops: float


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", default=None, help="HF directory or .gguf (default: the bundled model)")
    parser.add_argument("--load-format", default="auto", help="auto, safetensors, gguf or dummy (random weights)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--disable-cuda-graph", action="store_true")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--input-len", type=int, nargs="+", default=[256])
    parser.add_argument("--output-len", type=int, nargs="+", default=[16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--copy-mb",
        type=int,
        default=None,
        help="size of the copy that measures bandwidth (default 256 on CPU, 1024 on CUDA)",
    )
    parser.add_argument("--result-filename", default=None, help="append one JSON line per run here")
    parser.add_argument("--run-name", default="before")
    return parser.parse_args(argv)


def build_runner(args: argparse.Namespace) -> ModelRunner:
    """A ModelRunner whose pool and table fit the largest batch of the longest requests."""
    longest = max(args.input_len) + max(args.output_len)
    from radixlm.model_loader.hub import resolve_server_args

    server_args = ServerArgs(
        model_path=args.model_path,
        load_format=args.load_format,
        dtype=args.dtype,
        device=args.device,
        attention_backend=args.attention_backend,
        disable_cuda_graph=args.disable_cuda_graph,
        num_threads=args.num_threads,
        max_total_tokens=max(args.batch_size) * longest + 2,
        max_running_requests=max(args.batch_size),
        context_length=longest + 1,
        cuda_graph_max_bs=max(args.batch_size),
        log_level="warning",
    )
    return ModelRunner(resolve_server_args(server_args))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_ceilings(device: torch.device, dtype: torch.dtype, copy_mb: Optional[int]) -> Ceilings:
    """Best-of-5 large copy and large matmul on `device`, the model's dtype for the matmul."""
    copy_mb = copy_mb or (1024 if device.type == "cuda" else 256)
    src = torch.ones(copy_mb << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = best_time(lambda: dst.copy_(src), device)
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    mm_s = best_time(lambda: a @ b, device)
    return Ceilings(2 * src.numel() / copy_s / 1e9, 2 * n**3 / mm_s / 1e9)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """Fastest of `repeats` timed calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter (shared ones once): what one decode step must read."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def matmul_params(model: nn.Module, vocab_size: int, hidden_size: int) -> tuple[int, int]:
    """Weights multiplied per token: (body Linears, LM head). A tied head is the embedding used as
    one; the head runs only on the rows whose logits are taken (one per request in a prefill)."""
    body, head = {}, vocab_size * hidden_size
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features != vocab_size:
            body[id(m.weight)] = m.weight.numel()
    return sum(body.values()), head


def extend_batch(runner: ModelRunner, ids: torch.Tensor) -> ForwardBatch:
    """Prefill of `ids` [B, L] from position 0: request i in table row i."""
    bs, length = ids.shape
    dev = dict(device=runner.device, dtype=torch.int64)
    table = runner.req_to_token_pool.table
    return ForwardBatch(
        ForwardMode.EXTEND,
        ids.reshape(-1).to(runner.device),
        torch.arange(length, **dev).repeat(bs),
        table[:bs, :length].reshape(-1),
        torch.arange(bs, **dev),
        torch.full((bs,), length, **dev),
        [length] * bs,
        [0] * bs,
        [length] * bs,
        torch.arange(1, bs + 1, **dev) * length - 1,
        table,
    )


def decode_batch(runner: ModelRunner, tokens: torch.Tensor, position: int) -> ForwardBatch:
    """One decode step: token i of `tokens` [B] at `position` of request i."""
    bs = tokens.shape[0]
    dev = dict(device=runner.device, dtype=torch.int64)
    table = runner.req_to_token_pool.table
    return ForwardBatch(
        ForwardMode.DECODE,
        tokens,
        torch.full((bs,), position, **dev),
        table[:bs, position],
        torch.arange(bs, **dev),
        torch.full((bs,), position + 1, **dev),
        [position + 1] * bs,
        [position] * bs,
        [1] * bs,
        torch.arange(bs, **dev),
        table,
    )


def assign_slots(runner: ModelRunner, bs: int, total_len: int) -> None:
    """Request i gets slots 1 + i * total_len ... (slot 0 is the pool's padding slot)."""
    slots = torch.arange(1, bs * total_len + 1, device=runner.device).view(bs, total_len)
    runner.req_to_token_pool.table[:bs, :total_len] = slots


def timed_steps(
    runner: ModelRunner, bs: int, input_len: int, output_len: int, gen: torch.Generator
) -> tuple[float, list[float]]:
    """Prefill seconds and each decode step's seconds (greedy tokens fed back)."""
    assign_slots(runner, bs, input_len + output_len)
    ids = torch.randint(0, runner.vocab_size, (bs, input_len), generator=gen)
    sync(runner.device)
    start = time.perf_counter()
    tokens = runner.forward(extend_batch(runner, ids)).argmax(-1)
    sync(runner.device)
    prefill = time.perf_counter() - start
    steps = []
    for position in range(input_len, input_len + output_len - 1):
        start = time.perf_counter()
        tokens = runner.forward(decode_batch(runner, tokens, position)).argmax(-1)
        sync(runner.device)
        steps.append(time.perf_counter() - start)
    return prefill, steps


def run_one(
    runner: ModelRunner, bs: int, input_len: int, output_len: int, gen: torch.Generator, log: Callable[[str], None]
) -> RunResult:
    """Time one configuration and print SGLang's lines for it."""
    prefill, steps = timed_steps(runner, bs, input_len, output_len, gen)
    log(f"Prefill. latency: {prefill:6.5f} s, throughput: {bs * input_len / prefill:9.2f} token/s")
    for i, step in enumerate(steps[:5]):
        log(f"Decode {i}. Batch size: {bs}, latency: {step:6.5f} s, throughput: {bs / step:9.2f} token/s")
    median = statistics.median(steps) if steps else float("nan")
    total = prefill + sum(steps)
    weights = weight_bytes(runner.model)
    kv = runner.pool.bytes_per_token() * bs * (input_len + output_len // 2)
    body, head = matmul_params(runner.model, runner.vocab_size, runner.config.hidden_size)
    decode_flops, prefill_flops = 2 * (body + head) * bs, 2 * (body * input_len + head) * bs
    if steps:
        log(f"Decode.  median latency: {median:6.5f} s, median throughput: {bs / median:9.2f} token/s")
    log(f"Total. latency: {total:6.3f} s, throughput: {bs * (input_len + output_len) / total:9.2f} token/s")
    return RunResult(
        bs,
        input_len,
        output_len,
        prefill,
        bs * input_len / prefill,
        median,
        bs / median,
        total,
        bs * (input_len + output_len) / total,
        weights,
        kv,
        (weights + kv) / median / 1e9,
        decode_flops / median / 1e9,
        prefill_flops / prefill / 1e9,
    )


def ceiling_line(r: RunResult, ceil: Ceilings) -> str:
    """The decode step against the measured ceilings."""
    return (
        f"Decode vs ceiling: reads {r.weight_bytes / 1e9:.3f} GB weights + {r.kv_bytes_median_step / 1e9:.3f} GB "
        f"KV per step -> {r.decode_gbps:.1f} GB/s = {100 * r.decode_gbps / ceil.copy_gbps:.0f}% of copy "
        f"{ceil.copy_gbps:.1f} GB/s; {r.decode_gflops:.1f} GFLOP/s = "
        f"{100 * r.decode_gflops / ceil.matmul_gflops:.0f}% of matmul {ceil.matmul_gflops:.1f} GFLOP/s "
        f"(prefill {r.prefill_gflops:.1f} GFLOP/s)"
    )


def main(argv: Optional[list[str]] = None) -> list[RunResult]:
    """Build the runner once, measure the ceilings, then warm up and time every configuration."""
    args = parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    runner = build_runner(args)
    ceil = measure_ceilings(runner.device, runner.dtype, args.copy_mb)
    log(
        f"device {runner.device}, dtype {runner.dtype}, weights {weight_bytes(runner.model) / 1e9:.3f} GB, "
        f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}; measured ceilings: "
        f"copy {ceil.copy_gbps:.1f} GB/s (read + write), matmul {ceil.matmul_gflops:.1f} GFLOP/s"
    )
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for bs, input_len, output_len in itertools.product(args.batch_size, args.input_len, args.output_len):
        log("Warmup ...")
        timed_steps(runner, bs, min(input_len, 32), min(output_len, 4), gen)
        log(f"Benchmark ... batch size {bs}, input len {input_len}, output len {output_len}")
        result = run_one(runner, bs, input_len, output_len, gen, log)
        if output_len > 1:
            log(ceiling_line(result, ceil))
        results.append(result)
        if args.result_filename:
            append_jsonl(
                args.result_filename,
                {
                    "run_name": args.run_name,
                    **asdict(result),
                    **asdict(ceil),
                    "device": str(runner.device),
                    "dtype": str(runner.dtype),
                },
            )
    return results


if __name__ == "__main__":
    main()
