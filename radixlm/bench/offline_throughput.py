"""`python -m radixlm.bench_offline_throughput`: the throughput of the Engine in this process, no HTTP.

All requests go to the engine in one `generate` call (greedy, `ignore_eos`, each its requested
output length) after a small warm-up and a cache flush; the result is printed in SGLang's
layout. `--baseline hf` then runs HF transformers `generate` on the same requests and the same
weights (see `radixlm.bench.hf_baseline`) and prints the ratio. Every ServerArgs field is a flag
(`--max-total-tokens`, `--disable-radix-cache`, `--chunked-prefill-size`, `--dtype`, ...).

    python -m radixlm.bench_offline_throughput --num-prompts 64 --random-input-len 128 --random-output-len 64
    python -m radixlm.bench_offline_throughput --dataset-name generated-shared-prefix --disable-radix-cache
    python -m radixlm.bench_offline_throughput --dataset-name sharegpt --dataset-path sg.json --baseline hf
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, Optional

from radixlm.bench.datasets import BenchRequest, add_dataset_args, dataset_summary, sample_requests
from radixlm.bench.metrics import append_jsonl, format_block
from radixlm.config.cli_args import HTTP_ONLY, add_server_args, server_args_from
from radixlm.config.server_args import ServerArgs

DEFAULTS = {"log_level": "warning"}


@dataclasses.dataclass(frozen=True)
class OfflineResult:
    """One timed engine call."""

    completed: int
    duration: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int

    def rows(self) -> list[tuple[str, Any]]:
        """SGLang's offline result rows, plus the cache hit rate."""
        d = self.duration
        return [
            ("Backend:", "engine"),
            ("Successful requests:", self.completed),
            ("Benchmark duration (s):", d),
            ("Total input tokens:", self.input_tokens),
            ("Total generated tokens:", self.output_tokens),
            ("Request throughput (req/s):", self.completed / d),
            ("Input token throughput (tok/s):", self.input_tokens / d),
            ("Output token throughput (tok/s):", self.output_tokens / d),
            ("Total token throughput (tok/s):", (self.input_tokens + self.output_tokens) / d),
            ("Cache hit rate:", f"{100 * self.cached_tokens / max(self.input_tokens, 1):.2f}%"),
        ]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataset_args(parser)
    add_server_args(parser.add_argument_group("engine (ServerArgs)"), HTTP_ONLY, DEFAULTS)
    parser.add_argument(
        "--baseline",
        choices=("none", "hf"),
        default="none",
        help="hf: also run HF transformers generate on the same requests",
    )
    parser.add_argument("--hf-batch-size", type=int, default=8, help="static batch size of the HF baseline")
    parser.add_argument("--disable-ignore-eos", action="store_true", help="let requests stop at EOS")
    parser.add_argument("--result-filename", default=None, help="append one JSON line with the results here")
    return parser.parse_args(argv)


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerArgs fields among the parsed flags."""
    return server_args_from(args, HTTP_ONLY)


def sampling_params(requests: list[BenchRequest], ignore_eos: bool) -> list[dict]:
    return [{"temperature": 0.0, "max_new_tokens": r.output_len, "ignore_eos": ignore_eos} for r in requests]


def warm_up(engine: Any, requests: list[BenchRequest]) -> None:
    """Two short generations (first-call costs out of the timing), then an empty cache."""
    engine.generate(
        input_ids=[r.prompt_ids[:16] for r in requests[:2]], sampling_params={"max_new_tokens": 4, "ignore_eos": True}
    )
    engine.flush_cache()


def run_engine(engine: Any, requests: list[BenchRequest], ignore_eos: bool) -> OfflineResult:
    """Time one `generate` call over every request; counts come from the engine's meta_info."""
    start = time.perf_counter()
    outs = engine.generate(
        input_ids=[r.prompt_ids for r in requests], sampling_params=sampling_params(requests, ignore_eos)
    )
    duration = time.perf_counter() - start
    meta = [o["meta_info"] for o in outs]
    return OfflineResult(
        len(outs),
        duration,
        sum(m["prompt_tokens"] for m in meta),
        sum(m["completion_tokens"] for m in meta),
        sum(m.get("cached_tokens", 0) for m in meta),
    )


def run_baseline(args: argparse.Namespace, requests: list[BenchRequest], ours: OfflineResult) -> dict:
    """HF generate on the same requests; prints its block and the ratio; returns the record fields."""
    import torch

    from radixlm.bench.hf_baseline import build_hf_model, run_hf_baseline
    from radixlm.executor.model_runner import resolve_device
    from radixlm.model_loader.loader import load_model_config, resolve_dtype

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, load_model_config(args.model_path, args.trust_remote_code), device)
    model = build_hf_model(args.model_path, args.load_format, dtype, device, args.trust_remote_code)
    hf = run_hf_baseline(model, requests, args.hf_batch_size)
    ratio = (ours.output_tokens / ours.duration) / hf.output_throughput
    print(
        format_block(
            f"HF transformers generate (batch {hf.batch_size})",
            [
                ("Benchmark duration (s):", hf.duration),
                ("Total generated tokens:", hf.output_tokens),
                ("Output token throughput (tok/s):", hf.output_throughput),
                ("radixlm / HF output throughput:", f"{ratio:.2f}x"),
            ],
        ),
        flush=True,
    )
    return {
        "hf_batch_size": hf.batch_size,
        "hf_duration": hf.duration,
        "hf_output_throughput": hf.output_throughput,
        "ratio_vs_hf": ratio,
    }


def main(argv: Optional[list[str]] = None) -> dict:
    """Start the engine, build the requests with its tokenizer, time them, optionally run HF."""
    import radixlm

    args = parse_args(argv)
    if args.model_path is None:
        args.model_path = ServerArgs().model_path
    from radixlm.model_loader.hub import resolve_model_path

    args.model_path = resolve_model_path(args.model_path, args.revision)  # a Hub id: its local snapshot
    load_start = os.getloadavg()[0]
    with radixlm.Engine(**engine_kwargs(args)) as engine:
        requests = sample_requests(args, engine.tokenizer, engine.vocab_size)
        print(f"#Input tokens / #Output tokens: {dataset_summary(requests)}", flush=True)
        warm_up(engine, requests)
        result = run_engine(engine, requests, not args.disable_ignore_eos)
    print(format_block("Offline Throughput Benchmark Result", result.rows()), flush=True)
    record = {
        "dataset_name": args.dataset_name,
        "num_prompts": len(requests),
        **dataclasses.asdict(result),
        "output_throughput": result.output_tokens / result.duration,
        "total_throughput": (result.input_tokens + result.output_tokens) / result.duration,
        "load_avg_start": load_start,
    }
    if args.baseline == "hf":
        record.update(run_baseline(args, requests, result))
    record["load_avg_end"] = os.getloadavg()[0]
    print(f"load average (1 min): {load_start:.2f} at start, {record['load_avg_end']:.2f} at end", flush=True)
    if args.result_filename:
        append_jsonl(args.result_filename, record)
    return record


if __name__ == "__main__":
    main()
