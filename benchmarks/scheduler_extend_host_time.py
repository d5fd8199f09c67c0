"""Host time the scheduler spends per prefill (extend) step with long cached prefixes, without a GPU.

The shared-prefix workload of `gpu_bench.py` (16 groups x 64 prompts, each a 2,048-token group
prefix + 128 own tokens, 128 output tokens, all submitted at once, 256 running at most, 16,384
prefill tokens per step) run by the scheduler built in this process on a tiny random Llama
(2 layers, hidden 64). The scheduler's phase timers give schedule / launch / process per extend
step; the model's forward is timed on its own, so `launch - forward` is the host's part of the
launch (sampling setup, handing the prompts to the radix tree). Host-to-device copies per extend
step are counted too: on a GPU each is a pinned staging buffer plus a copy (free on the CPU).

    python benchmarks/scheduler_extend_host_time.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def shared_prefix_prompts(groups: int, per_group: int, prefix_len: int, own_len: int, vocab: int) -> list[list[int]]:
    """Group g's prompts share one random prefix, then each has its own random tokens."""
    out = []
    for g in range(groups):
        prefix = random.Random(1000 + g).choices(range(3, vocab), k=prefix_len)
        rng = random.Random(g)
        out += [prefix + rng.choices(range(3, vocab), k=own_len) for _ in range(per_group)]
    return out


def _counting_copies(counts: dict[str, int]) -> None:
    """Count calls of `device_copy.pinned_to_device` (every `to_device` / `to_device_split`) in `counts["now"]`."""
    from radixlm.forward import device_copy

    copy = device_copy.pinned_to_device

    def counted(host: torch.Tensor, device: torch.device) -> torch.Tensor:
        counts["now"] += 1
        return copy(host, device)

    device_copy.pinned_to_device = counted


def _attributing(step: Callable[[], Any], timer: Any, counts: dict[str, int]) -> Callable[[], Any]:
    """`step`, adding the copies it made to `counts["extend"]` when it launched an extend batch."""

    def wrapper() -> Any:
        counts["now"], before = 0, timer.totals.get("extend", {}).get("steps", 0)
        out = step()
        if timer.totals.get("extend", {}).get("steps", 0) > before:
            counts["extend"] += counts["now"]
        return out

    return wrapper


def _timed(fn: Callable[..., Any], totals: dict[str, float]) -> Callable[..., Any]:
    def wrapper(batch: Any) -> Any:
        start = time.perf_counter()
        out = fn(batch)
        totals[batch.mode.name.lower()] = totals.get(batch.mode.name.lower(), 0.0) + time.perf_counter() - start
        return out

    return wrapper


def measure(path: str, a: argparse.Namespace, copies: dict[str, int]) -> dict[str, float]:
    """One run; `copies` is the dict `_counting_copies` counts in."""
    from transformers import AutoTokenizer

    from radixlm.config.server_args import ServerArgs
    from radixlm.ipc.messages import TokenizedGenerateReq
    from radixlm.sampling.sampling_params import SamplingParams
    from radixlm.scheduler.loop import step_function
    from radixlm.scheduler.process import build_scheduler, freeze_startup_objects

    n = a.groups * a.per_group
    # room for every prefix and every request's own tokens: nothing is evicted, as on the H200
    pool = a.groups * a.prefix_len + n * (a.own_len + a.out_len) + 2 * a.max_prefill_tokens
    args = ServerArgs(
        model_path=path,
        dtype="float32",
        max_total_tokens=pool,
        max_running_requests=a.max_running,
        max_prefill_tokens=a.max_prefill_tokens,
        context_length=4096,
        log_level="warning",
    )
    tok = AutoTokenizer.from_pretrained(path)
    sched = build_scheduler(args, tok, {tok.eos_token_id})
    forward = {}
    copies.update(now=0, extend=0)
    sched.runner.forward = _timed(sched.runner.forward, forward)
    step = _attributing(step_function(sched), sched.timer, copies)
    prompts = shared_prefix_prompts(a.groups, a.per_group, a.prefix_len, a.own_len, len(tok))
    freeze_startup_objects()  # as the scheduler process does once it is built
    params = SamplingParams(temperature=0, max_new_tokens=a.out_len, ignore_eos=True)
    start = time.perf_counter()
    for i, ids in enumerate(prompts):
        sched.handle(TokenizedGenerateReq(rid=str(i), input_ids=ids, params=params))
    done = 0
    while sched.has_work():
        done += sum(out.finish_reason is not None for out in step())
    wall = time.perf_counter() - start
    assert done == n, (done, n)
    ext = sched.timer.summary()["extend"]
    per = {k: 1000 * ext[k] / ext["steps"] for k in ("schedule", "launch", "device_wait", "process")}
    per["forward"] = 1000 * forward.get("extend", 0.0) / ext["steps"]
    per["copies"] = copies["extend"] / ext["steps"]
    per.update(steps=ext["steps"], rows=ext["rows"] / ext["steps"], wall_s=wall)
    return per


def main() -> None:
    from tiny_models import make_tiny_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--per-group", type=int, default=64)
    ap.add_argument("--prefix-len", type=int, default=2048)
    ap.add_argument("--own-len", type=int, default=128)
    ap.add_argument("--out-len", type=int, default=128)
    ap.add_argument("--max-running", type=int, default=256)
    ap.add_argument("--max-prefill-tokens", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", help="also write every run's figures here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = make_tiny_model(tempfile.mkdtemp(), "llama")
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["max_position_embeddings"] = 4096  # room for 2,048 + 128 + 128 positions
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    print(
        "| run | extend steps | rows/step | schedule ms | launch ms (forward) | host launch ms | process ms | "
        "host ms/step | host-to-device copies/step | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    runs, copies = [], {"now": 0, "extend": 0}
    _counting_copies(copies)
    for r in range(a.repeat):
        ms = measure(path, a, copies)
        host_launch = ms["launch"] - ms["forward"]
        ms["host"] = ms["schedule"] + host_launch + ms["process"]
        ms["load"] = os.getloadavg()[0]
        runs.append(ms)
        print(
            f"| {r} | {ms['steps']} | {ms['rows']:.0f} | {ms['schedule']:.2f} | {ms['launch']:.2f} "
            f"({ms['forward']:.2f}) | {host_launch:.2f} | {ms['process']:.2f} | **{ms['host']:.2f}** | "
            f"{ms['copies']:.0f} | {ms['load']:.2f} |",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
