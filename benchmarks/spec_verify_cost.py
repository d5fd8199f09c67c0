"""Cost of a speculative verify step against a plain decode step, dummy weights.

At batch B, every request has `--context` tokens of KV; a plain decode step runs one token per
request (as the scheduler runs it: CUDA graphs on a GPU unless --disable-cuda-graph; the eager
step is printed too). A verify step runs k draft tokens plus the last token per request, with
logits for all k + 1 rows, two ways: as one extend (eager; what `radixlm.speculative` runs after
a jump-forward or when the rows exceed the graphs) and as a decode of B * (k + 1) rows, one per
token (what it runs otherwise: in the decode CUDA graphs when they fit). The ratio verify /
decode is the break-even acceptance length: a verify emitting more tokens per step on average
than that ratio is a net win. The plain decode runs on a runner without speculation, the
verify steps on one built as a speculating server's (its attention backend takes max(--drafts)
+ 1 decode rows per request), one after the other.

    python benchmarks/spec_verify_cost.py                          # GPU: Llama-3-8B shape, bf16
    python benchmarks/spec_verify_cost.py --shape tiny --device cpu --iters 3   # CPU dry run
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import torch
from gpu_bench import SHAPES as GPU_SHAPES

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # radixlm from this checkout

SHAPES = {
    **GPU_SHAPES,
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=False,
        max_position_embeddings=2048,
    ),
}


def model_dir(shape: str) -> str:
    from transformers import LlamaConfig

    path = tempfile.mkdtemp(prefix=f"{shape}-")
    LlamaConfig(**SHAPES[shape], torch_dtype="bfloat16").save_pretrained(path)
    return path


def make_runner(path: str, device: str, max_bs: int, max_rows: int, context: int, graphs: bool, drafts: int = 0) -> Any:
    """A runner for `max_bs` requests whose decode graphs take up to `max_rows` rows; with
    `drafts`, built as a speculating server's (NGRAM, `drafts` per step): its attention backend
    then takes drafts + 1 decode rows per request."""
    from radixlm.config.server_args import ServerArgs
    from radixlm.executor.model_runner import ModelRunner

    args = ServerArgs(
        model_path=path,
        load_format="dummy",
        device=device,
        dtype="bfloat16" if device == "cuda" else "float32",
        max_total_tokens=max_bs * (context + 32) + 64,
        max_running_requests=max_rows,
        cuda_graph_max_bs=max_rows,
        disable_cuda_graph=not graphs,
        context_length=context + 64,
        num_threads=1 if device == "cpu" else None,
        log_level="warning",
        speculative_algorithm="NGRAM" if drafts else None,
        speculative_num_steps=drafts or None,
    )
    return ModelRunner(args)


def step_batch(runner: Any, bs: int, context: int, new: int, as_rows: bool = False) -> Any:
    """`bs` requests with `context` cached tokens each (rows of distinct slots) running `new`
    tokens: DECODE for one, else an EXTEND with logits for every new row, or with `as_rows` a
    DECODE of one row per token (each row: its request's table row, seq_len = position + 1)."""
    from radixlm.forward.batch import ForwardBatch, ForwardMode

    dev = runner.device
    table = runner.req_to_token_pool.table
    span = context + new
    for i in range(bs):  # slot 0 is the padding slot
        table[i, :span] = torch.arange(1 + i * span, 1 + (i + 1) * span, device=dev)
    i64 = dict(device=dev, dtype=torch.int64)
    rows = torch.arange(bs, **i64)
    pos = (context + torch.arange(new, **i64)).repeat(bs)
    locs = table[rows.repeat_interleave(new), pos]
    if as_rows or new == 1:
        pool = rows.repeat_interleave(new)
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=torch.randint(0, 500, (bs * new,), **i64),
            positions=pos,
            out_cache_loc=locs,
            req_pool_indices=pool,
            seq_lens=pos + 1,
            seq_lens_cpu=(pos + 1).tolist(),
            extend_prefix_lens_cpu=pos.tolist(),
            extend_seq_lens_cpu=[1] * (bs * new),
            logit_indices=torch.arange(bs * new, **i64),
            req_to_token=table,
        )
    return ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=torch.randint(0, 500, (bs * new,), **i64),
        positions=pos,
        out_cache_loc=locs,
        req_pool_indices=rows,
        seq_lens=torch.full((bs,), span, **i64),
        seq_lens_cpu=[span] * bs,
        extend_prefix_lens_cpu=[context] * bs,
        extend_seq_lens_cpu=[new] * bs,
        logit_indices=torch.arange(bs * new, **i64),
        req_to_token=table,
    )


def time_ms(fn: Callable[[], Any], iters: int, device: torch.device) -> float:
    """Median milliseconds of `fn` (synchronised on a GPU), after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--drafts", type=int, nargs="+", default=[4, 8], help="draft tokens per request (k)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--disable-cuda-graph", action="store_true")
    a = ap.parse_args()
    path = model_dir(a.shape)
    graphs = a.device == "cuda" and not a.disable_cuda_graph
    max_rows = max(a.batch_sizes) * (max(a.drafts) + 1)
    plain = time_plain(make_runner(path, a.device, max(a.batch_sizes), max_rows, a.context, graphs), a)
    free_device_memory(a.device)
    runner = make_runner(path, a.device, max(a.batch_sizes), max_rows, a.context, graphs, max(a.drafts))
    print(
        f"{a.shape}, {runner.dtype}, {runner.device}, context {a.context}, CUDA graphs for decode: {graphs}, "
        f"verify runner's backend: {type(runner.backend).__name__}, up to {max(a.drafts) + 1} rows per request"
    )
    print(
        "| batch | plain decode ms | eager decode ms | k drafts | verify as extend ms | verify as decode rows ms "
        "| extend / decode | rows / decode (<= 1.3) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for bs in a.batch_sizes:
        plain_ms, eager_ms = plain[bs]
        for k in a.drafts:
            extend = step_batch(runner, bs, a.context, k + 1)
            ext_ms = time_ms(lambda: runner.forward(extend), a.iters, runner.device)
            rows = step_batch(runner, bs, a.context, k + 1, as_rows=True)
            rows_ms = time_ms(lambda: runner.forward(rows), a.iters, runner.device)
            print(
                f"| {bs} | {plain_ms:.3f} | {eager_ms:.3f} | {k} | {ext_ms:.3f} | {rows_ms:.3f} "
                f"| {ext_ms / plain_ms:.2f}x | {rows_ms / plain_ms:.2f}x |",
                flush=True,
            )


def time_plain(runner: Any, a: argparse.Namespace) -> dict[int, tuple[float, float]]:
    """Per batch size: (decode step ms as the scheduler runs it, eager decode step ms) on a runner
    without speculation (one decode row per request)."""
    plain = {}
    for bs in a.batch_sizes:
        decode = step_batch(runner, bs, a.context, 1)
        plain[bs] = (
            time_ms(lambda: runner.forward(decode), a.iters, runner.device),
            time_ms(lambda: runner._run_eager(decode), a.iters, runner.device),
        )
    return plain


def free_device_memory(device: str) -> None:
    """Release what a dropped runner held (its weights, pool and CUDA graphs) before the next."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
