"""Speculative decoding: decode tok/s of NGRAM vs off, batch 1, on input-copying prompts
("rewrite this paragraph with one word changed", "continue this code"), the bundled
SmolLM2-135M-Instruct (or --model-path) on the CPU (or --device cuda), greedy. Both schedulers
are built in this process from the same weights and run alternately (which one goes first
alternates too) so a load change on the box hits both; every pair's figures are printed, then
the median speed-up and the totals. The outputs must be identical.

Decode tok/s of a request = (completion tokens - 1) / (time from its first token to its last):
the prefill is the same with and without speculation and is left out. The same tokens per
CPU-second of this process (one thread) is printed too: it moves far less than wall time when
other work shares the cores.

    python benchmarks/spec_bench.py [--rounds 3] [--max-new-tokens 128] [--draft-tokens 8]
    python benchmarks/spec_bench.py --device cuda --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # radixlm from this checkout

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff for more than a century. Every night its "
    "keeper climbed the narrow stairs, trimmed the wick and watched the beam sweep across the dark "
    "water. Ships passing the rocky coast relied on that light to find the harbour safely, and the "
    "village below grew up around the small port that the lighthouse protected."
)
CODE = '''def merge_sorted(left, right):
    """Merge two sorted lists into one sorted list."""
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i])
            i += 1
        else:
            result.append(right[j])
            j += 1
    result.extend(left[i:])
    result.extend(right[j:])
    return result


def merge_sort(items):
    """Sort a list with merge sort."""
'''
TASKS = [
    f"Rewrite this paragraph with one word changed (replace 'old' with 'ancient'), keeping "
    f"everything else exactly the same:\n\n{PARAGRAPH}",
    f"Here is some Python code. Repeat it exactly, then continue it by completing merge_sort:\n\n{CODE}",
    f"Copy the following text exactly, word for word:\n\n{PARAGRAPH}",
]


def build(path: str, tokenizer: Any, spec: dict, a: argparse.Namespace) -> Any:
    from radixlm.config.server_args import ServerArgs
    from radixlm.scheduler.process import build_scheduler

    threads = a.threads if a.device == "cpu" else None
    args = ServerArgs(
        model_path=path, device=a.device, max_total_tokens=8192, num_threads=threads, log_level="warning", **spec
    )
    return build_scheduler(args, tokenizer, {tokenizer.eos_token_id})


@dataclass
class Run:
    """One request alone: its output and the wall / CPU seconds from its first token to its last."""

    ids: list[int]
    wall_s: float
    cpu_s: float
    meta: dict

    @property
    def decoded(self) -> int:
        return len(self.ids) - 1


def run_one(sched: Any, ids: list[int], max_new: int) -> Run:
    from radixlm.ipc.messages import TokenizedGenerateReq
    from radixlm.sampling.sampling_params import SamplingParams
    from radixlm.scheduler.loop import plain_step

    sched.cache.flush()
    sched.handle(TokenizedGenerateReq("r", ids, SamplingParams(temperature=0, max_new_tokens=max_new), stream=True))
    out: list[int] = []
    first = meta = None
    while sched.has_work():
        for o in plain_step(sched):
            out += o.new_ids
            meta = o.meta
            if first is None and o.new_ids:
                first = time.perf_counter(), time.process_time()
    wall, cpu = time.perf_counter() - first[0], time.process_time() - first[1]
    sched.check_leak()
    return Run(out, wall, cpu, meta)


def main() -> None:
    from radixlm.config.bundled import bundled_model_path
    from radixlm.tokenizer.loader import apply_chat_template, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--draft-tokens", type=int, default=8, help="--speculative-num-draft-tokens")
    ap.add_argument("--model-path", default=None, help="default: the bundled SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no oversubscription on a shared box)")
    a = ap.parse_args()
    path = a.model_path or bundled_model_path()
    tok = load_tokenizer(path)
    prompts = [apply_chat_template(tok, [{"role": "user", "content": t}]) for t in TASKS]
    prompts = [tok.encode(p, add_special_tokens=False) for p in prompts]
    scheds = {
        "off": build(path, tok, {"disable_overlap_schedule": True}, a),
        "ngram": build(
            path, tok, {"speculative_algorithm": "NGRAM", "speculative_num_draft_tokens": a.draft_tokens}, a
        ),
    }
    print(
        f"{os.path.basename(path)} on {a.device}, batch 1, greedy, {a.threads} thread(s), "
        f"max_new_tokens {a.max_new_tokens}, NGRAM {a.draft_tokens} tokens/verify"
    )
    print(
        "| round | prompt | tokens | off tok/s | NGRAM tok/s | speed-up | off tok/CPU-s | NGRAM tok/CPU-s "
        "| accept length | same output |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    runs: dict[str, list[Run]] = {"off": [], "ngram": []}
    for r in range(a.rounds):
        for i, ids in enumerate(prompts):
            order = ["off", "ngram"] if (r + i) % 2 == 0 else ["ngram", "off"]  # alternate who runs first
            got = {name: run_one(scheds[name], ids, a.max_new_tokens) for name in order}
            off, on = got["off"], got["ngram"]
            for name in got:
                runs[name].append(got[name])
            print(
                f"| {r} | {i} | {len(on.ids)} | {off.decoded / off.wall_s:.1f} | {on.decoded / on.wall_s:.1f} | "
                f"{off.wall_s / on.wall_s:.2f}x | {off.decoded / off.cpu_s:.1f} | {on.decoded / on.cpu_s:.1f} | "
                f"{on.meta['spec_accept_length']:.2f} | {on.ids == off.ids} |",
                flush=True,
            )
    _summary(runs)
    print(f"server-wide avg_spec_accept_length {scheds['ngram'].info()['avg_spec_accept_length']:.2f}")


def _summary(runs: dict[str, list[Run]]) -> None:
    """Median of the per-pair speed-ups, and all decoded tokens over all decode time, per mode."""
    pairs = list(zip(runs["off"], runs["ngram"]))
    wall = statistics.median(off.wall_s / on.wall_s for off, on in pairs)
    cpu = statistics.median(off.cpu_s / on.cpu_s for off, on in pairs)
    print(f"\nmedian speed-up over the pairs: wall {wall:.2f}x, CPU time {cpu:.2f}x")
    for name, rs in runs.items():
        tokens = sum(x.decoded for x in rs)
        print(
            f"{name}: {tokens} decoded tokens, {tokens / sum(x.wall_s for x in rs):.2f} tok/s wall, "
            f"{tokens / sum(x.cpu_s for x in rs):.2f} tok/CPU-s"
        )


if __name__ == "__main__":
    main()
