"""NGRAM speculative decoding vs off end to end on a synthetic input-copying workload, dummy
weights: the Llama-3-8B shape in bf16 on the GPU (default), or a tiny Llama on the CPU (`--tiny`,
a smoke run).

Random weights follow no instruction, so the copying is built from the model's own text: each
request's random seed text S is first continued greedily (plain decoding) into G, and its prompt
is S + G + S, the passage and then its start again. A model whose next token depended only on
the recent tokens would now repeat G, which NGRAM drafts from the prompt; how much of G it really
repeats (attention over the longer prompt can change its picks) is measured: `copied` is the
share of G the output reproduces from its start. The `free` workload (random prompts of the same
length) is what the model does on its own. Random-weight greedy text is mostly runs of one token
repeated many times (the llama-3.2-1b shape in float32 on the CPU: runs of 6 to 22 tokens, and
`copied` 0: attention over the longer prompt changed its picks), so on both workloads NGRAM's
drafts are accepted within a run and rejected at its end: the figures measure the verify
machinery's net effect at that acceptance, not how well a trained model copies.

Each workload runs at batch 1 (requests one at a time) and at batch `--batch` (all at once),
through the same scheduler loop (`plain_step`) with NGRAM off and on; both schedulers have the
same weights and alternate which one runs first. Decode tok/s = the tokens generated after every
request had its first, over the time from then to the last token (prefill left out: the same
either way). Accept length = tokens emitted per request decode step (SGLang's
`avg_spec_accept_length`). The verify step's cost (the batch's rows with k drafts each, run as
decode rows in the CUDA graphs, over a plain decode step; `spec_verify_cost.py`) is measured on
the same runner at the workload's mean context: NGRAM is a net win where the accept length
exceeds it. Greedy speculation is lossless, so outputs should be identical up to rounding.

Every batch whose outputs differ is run again in both modes with logprobs (top 2) and each
differing output is classified at its first differing position by the plain run's margin
between its top-1 and top-2 logits there (logprobs differ from logits by one shared constant,
so the margin is the logits'): below `--tie-bound` it is a near-tie, which the verify step's
other rounding (its rows run at a larger batch: other GEMM tilings and attention splits) can
flip; at or above it a failure. After printing all figures and the margins table the run fails
on any failure (or on a divergence the rerun does not reproduce: greedy decoding with fixed
weights is deterministic, so that is not rounding either). The default bounds: a logit is a
dot product of the final hidden state (d = 2,048 to 4,096) with a row of the LM head, computed
after 16 to 32 layers; a different summation order changes it by a few units of the last
place of the values it is built from, amplified through the layers. bfloat16 keeps 8
significant bits (unit roundoff 2^-9 = 2.0e-3, the hidden state rounded to it between layers):
at logits of magnitude about 10, one ulp is 0.03 to 0.06, so 0.05 is about one ulp of the
logit. float32 has unit roundoff 2^-24 = 6.0e-8: 1e-3 leaves a factor of over 1,000 above one
ulp at that magnitude for the growth through the layers, and is still far below the margins
a real error (a wrong K/V row, a wrong position) produces, which are of the order of the
logits' spread (units).

    python benchmarks/spec_copy_bench.py                 # GPU: Llama-3-8B shape, bf16 (~2 min on an H100)
    python benchmarks/spec_copy_bench.py --shape llama-3.2-1b --dtype float32   # GPU, float32 rounding
    python benchmarks/spec_copy_bench.py --tiny          # CPU smoke run (seconds)

In bf16 a verify step's rows run at a larger batch than plain decode steps (another GEMM tiling,
other rounding), so a near-tie between two logits can in principle resolve differently; float32
makes that far less likely.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from spec_verify_cost import SHAPES, model_dir, step_batch, time_ms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # radixlm from this checkout

MODES = ("off", "ngram")
_SPEC_KEYS = ("spec_verify_steps", "spec_emitted_tokens", "spec_draft_tokens", "spec_accepted_tokens")
TIE_BOUNDS = {"float32": 1e-3, "bfloat16": 0.05}  # top-1 - top-2 logit margins that rounding can flip


@dataclass
class Run:
    """One batch of requests run to the end by one scheduler."""

    outputs: list[list[int]]
    decoded: int  # tokens generated after every request had its first
    seconds: float  # from then to the last token
    steps: int  # spec counters over the run (NGRAM only): request decode steps,
    emitted: int  # tokens they emitted,
    proposed: int  # drafts proposed
    accepted: int  # and drafts accepted
    tops: Optional[list[list]] = None  # with logprobs: per output, per token, [(logprob, id)] x 2


def build(path: str, a: argparse.Namespace, spec: dict) -> Any:
    from radixlm.config.server_args import ServerArgs
    from radixlm.scheduler.process import build_scheduler

    cpu = a.device == "cpu"
    args = ServerArgs(
        model_path=path,
        load_format="dummy",  # the same seed in both schedulers: the same weights
        device=a.device,
        dtype=a.dtype,
        max_total_tokens=a.batch * (a.context + a.max_new_tokens) * 2 + 1024,
        max_running_requests=a.batch,
        context_length=a.context + a.max_new_tokens + 64,
        num_threads=1 if cpu else None,
        disable_overlap_schedule=True,  # the loop speculation runs in, for both
        log_level="warning",
        **spec,
    )
    return build_scheduler(args, None, set())


def run_batch(sched: Any, prompts: list[list[int]], max_new: int, logprobs: bool = False) -> Run:
    """Greedy, `max_new` tokens each (EOS ignored), all submitted at once; the pool must end with
    no leaked slot. With `logprobs`, each token's top-2 logprobs (`Run.tops`)."""
    import torch

    from radixlm.ipc.messages import TokenizedGenerateReq
    from radixlm.sampling.sampling_params import SamplingParams
    from radixlm.scheduler.loop import plain_step

    sched.cache.flush()
    before = sched.info()
    params = SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True)
    lp = {"return_logprob": True, "top_logprobs_num": 2} if logprobs else {}
    for i, ids in enumerate(prompts):
        sched.handle(TokenizedGenerateReq(str(i), list(ids), params, stream=True, **lp))
    outs: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    metas: dict[str, dict] = {}
    start = first = None
    while sched.has_work():
        for o in plain_step(sched):
            outs[o.rid] += o.new_ids
            metas[o.rid] = o.meta
        if start is None and all(outs.values()):
            start, first = time.perf_counter(), sum(map(len, outs.values()))
    if sched.runner.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    sched.check_leak()
    after = sched.info()
    delta = {k: (after.get(k) or 0) - (before.get(k) or 0) for k in _SPEC_KEYS}
    outputs = [outs[str(i)] for i in range(len(prompts))]
    tops = [metas[str(i)]["output_top_logprobs"] for i in range(len(prompts))] if logprobs else None
    return Run(outputs, sum(map(len, outputs)) - first, seconds, *delta.values(), tops=tops)


def copy_prompts(off: Any, a: argparse.Namespace, vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts S + G + S, the passages G): S random, G its greedy continuation (plain decoding)."""
    rng = random.Random(a.seed)
    seeds = [[rng.randrange(3, vocab) for _ in range(a.seed_len)] for _ in range(a.batch)]
    passages = run_batch(off, seeds, a.max_new_tokens).outputs
    return [s + g + s for s, g in zip(seeds, passages)], passages


def free_prompts(a: argparse.Namespace, vocab: int, length: int) -> list[list[int]]:
    rng = random.Random(a.seed + 1)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(a.batch)]


def copied(outputs: list[list[int]], passages: list[list[int]]) -> float:
    """The mean share of each passage the output reproduces from its first token on."""
    shares = []
    for out, g in zip(outputs, passages):
        n = next((i for i, (x, y) in enumerate(zip(out, g)) if x != y), min(len(out), len(g)))
        shares.append(n / len(g))
    return statistics.mean(shares)


def measure(
    scheds: dict, prompts: list[list[int]], passages: Optional[list[list[int]]], batch: int, a: argparse.Namespace
) -> dict[str, Any]:
    """Every round: both modes over `prompts` (the first `batch1_requests` at batch 1), `batch` at
    a time; who goes first alternates. The rates, NGRAM's counters, `copied`, whether every
    output was the same in both modes and `diverged`: the first prompt of each batch that was not."""
    runs: dict[str, list[Run]] = {m: [] for m in MODES}
    count = a.batch1_requests if batch == 1 else len(prompts)
    copies, diverged = [], set()
    for r in range(a.rounds):
        for g in range(0, count, batch):
            for mode in MODES if (r + g) % 2 == 0 else MODES[::-1]:
                runs[mode].append(run_batch(scheds[mode], prompts[g : g + batch], a.max_new_tokens))
            if runs["off"][-1].outputs != runs["ngram"][-1].outputs:
                diverged.add(g)
            if passages is not None:
                copies.append(copied(runs["ngram"][-1].outputs, passages[g : g + batch]))
    return {**summarize(runs, statistics.mean(copies) if copies else None), "diverged": sorted(diverged)}


def summarize(runs: dict[str, list[Run]], copy_share: Optional[float]) -> dict[str, Any]:
    rate = {m: sum(x.decoded for x in rs) / sum(x.seconds for x in rs) for m, rs in runs.items()}
    on = runs["ngram"]
    steps, emitted = sum(x.steps for x in on), sum(x.emitted for x in on)
    proposed, accepted = sum(x.proposed for x in on), sum(x.accepted for x in on)
    return {
        "off_tok_s": rate["off"],
        "ngram_tok_s": rate["ngram"],
        "speedup": rate["ngram"] / rate["off"],
        "accept_length": emitted / steps if steps else None,
        "accept_rate": accepted / proposed if proposed else None,
        "copied": copy_share,
        "identical": all(x.outputs == y.outputs for x, y in zip(runs["off"], on)),
    }


def verify_cost(runner: Any, batch: int, drafts: int, context: int, iters: int) -> dict:
    """Plain decode step vs a verify of `drafts` drafts per request as decode rows, in ms."""
    decode = step_batch(runner, batch, context, 1)
    plain = time_ms(lambda: runner.forward(decode), iters, runner.device)
    rows = step_batch(runner, batch, context, drafts + 1, as_rows=True)
    verify = time_ms(lambda: runner.forward(rows), iters, runner.device)
    return {"decode_ms": plain, "verify_ms": verify, "ratio": verify / plain}


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU, small counts (smoke run)")
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-3-8b")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--batch", type=int, default=8, help="the larger batch (requests per workload)")
    ap.add_argument("--batch1-requests", type=int, default=4, help="requests run alone per round at batch 1")
    ap.add_argument("--seed-len", type=int, default=32, help="tokens of each random seed text S")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="tokens of G and of each output")
    ap.add_argument("--draft-tokens", type=int, default=8, help="--speculative-num-draft-tokens (drafts + 1)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tie-bound", type=float, default=None, help="near-tie margin (default by dtype: TIE_BOUNDS)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    a.device, a.iters = ("cpu", 3) if a.tiny else ("cuda", 20)
    if a.tiny:
        a.shape, a.dtype = "tiny", "float32"
        a.seed_len, a.max_new_tokens = min(a.seed_len, 8), min(a.max_new_tokens, 16)
        a.batch, a.batch1_requests, a.rounds = min(a.batch, 4), min(a.batch1_requests, 2), 1
    a.context = 2 * a.seed_len + a.max_new_tokens
    if a.tie_bound is None:
        a.tie_bound = TIE_BOUNDS[a.dtype]
    return a


def main(argv: Optional[list[str]] = None) -> dict:
    """Runs the benchmark and returns (and with --json writes) its figures and the divergences'
    margins; raises AssertionError after printing them if any NGRAM output differed from plain
    decoding's other than at a near-tie."""
    a = parse(argv)
    path = model_dir(a.shape)
    spec = {"speculative_algorithm": "NGRAM", "speculative_num_draft_tokens": a.draft_tokens}
    scheds = {"off": build(path, a, {}), "ngram": build(path, a, spec)}
    vocab = scheds["off"].runner.vocab_size
    prompts, passages = copy_prompts(scheds["off"], a, vocab)
    workloads = {"copy": (prompts, passages), "free": (free_prompts(a, vocab, len(prompts[0])), None)}
    for mode in MODES:  # compile the prefill kernels before anything is timed
        run_batch(scheds[mode], prompts, 8)
    print(
        f"{a.shape} dummy weights, {scheds['off'].runner.dtype} on {a.device}, greedy, NGRAM "
        f"{a.draft_tokens - 1} drafts/verify, prompts {len(prompts[0])} tokens (S {a.seed_len} + G "
        f"{a.max_new_tokens} + S), {a.max_new_tokens} new tokens, {a.rounds} round(s)"
    )
    results = {"args": vars(a), "rows": run_workloads(scheds, workloads, a)}
    context = len(prompts[0]) + a.max_new_tokens // 2  # the mean context of a decode step
    results["verify_cost"] = {b: print_cost(scheds["ngram"].runner, b, context, a) for b in (1, a.batch)}
    results["divergences"] = divergences(scheds, workloads, results["rows"], a)
    print_divergences(results["divergences"], a.tie_bound)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    failed = [d for d in results["divergences"] if d["verdict"] != "near-tie"]
    if failed:
        where = sorted({(d["workload"], d["batch"]) for d in failed})
        raise AssertionError(
            f"NGRAM outputs differ from plain decoding beyond a near-tie (margin >= {a.tie_bound:g}) in {where}: "
            "speculation must be lossless"
        )
    return results


def divergences(scheds: dict, workloads: dict, rows: list[dict], a: argparse.Namespace) -> list[dict]:
    """Each batch that diverged, run again in both modes with top-2 logprobs: one entry per
    differing output (`first_divergence`), or one `not reproduced` entry for the batch."""
    found = []
    for r in rows:
        prompts = workloads[r["workload"]][0]
        for g in r["diverged"]:
            group = prompts[g : g + r["batch"]]
            off, on = (run_batch(scheds[m], group, a.max_new_tokens, logprobs=True) for m in MODES)
            where = {"workload": r["workload"], "batch": r["batch"]}
            entries = [
                {**where, "request": g + i, **first_divergence(off, on, i, a.tie_bound)}
                for i in range(len(group))
                if off.outputs[i] != on.outputs[i]
            ]
            found += entries or [{**where, "request": g, "verdict": "not reproduced"}]
    return found


def first_divergence(off: Run, on: Run, i: int, bound: float) -> dict:
    """Output i's first differing position, each run's token and top-1 - top-2 margin there, and
    the verdict: `near-tie` when the plain run's margin is below `bound`, else `failure`."""
    x, y = off.outputs[i], on.outputs[i]
    pos = next(j for j in range(min(len(x), len(y))) if x[j] != y[j])
    plain, spec = margin(off.tops[i][pos]), margin(on.tops[i][pos])
    verdict = "near-tie" if plain is not None and plain < bound else "failure"
    return {
        "position": pos,
        "plain_token": x[pos],
        "spec_token": y[pos],
        "plain_margin": plain,
        "spec_margin": spec,
        "verdict": verdict,
    }


def margin(top: Optional[list]) -> Optional[float]:
    """Top-1 minus top-2 logprob (= logit) of one token's top list; None when it has none."""
    if not top or len(top) < 2:
        return None
    return top[0][0] - top[1][0]


def print_divergences(found: list[dict], bound: float) -> None:
    if not found:
        print("no divergence: every NGRAM output equals plain decoding's")
        return
    print(f"divergences (near-tie: the plain run's top-1 - top-2 margin < {bound:g}):")
    print(
        "| workload | batch | request | position | plain token | NGRAM token | plain margin | NGRAM margin | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for d in found:
        cells = [d.get(k, "-") for k in ("workload", "batch", "request", "position", "plain_token", "spec_token")]
        cells += [_fmt(d.get("plain_margin"), ".2e"), _fmt(d.get("spec_margin"), ".2e"), d["verdict"]]
        print("| " + " | ".join(map(str, cells)) + " |")


def run_workloads(scheds: dict, workloads: dict, a: argparse.Namespace) -> list[dict]:
    """One printed row per workload and batch size."""
    print("| workload | batch | off tok/s | NGRAM tok/s | speed-up | accept length | accept rate | copied | same |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, (prompts, passages) in workloads.items():
        for batch in (1, a.batch):
            rows.append({"workload": name, "batch": batch, **measure(scheds, prompts, passages, batch, a)})
            print(_row(rows[-1]), flush=True)
    return rows


def print_cost(runner: Any, batch: int, context: int, a: argparse.Namespace) -> dict:
    cost = verify_cost(runner, batch, a.draft_tokens - 1, context, a.iters)
    print(
        f"verify / decode step at batch {batch}, context {context}: {cost['verify_ms']:.3f} / "
        f"{cost['decode_ms']:.3f} ms = {cost['ratio']:.2f}x (NGRAM wins where the accept length is above it)"
    )
    return cost


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _row(r: dict) -> str:
    fmt = _fmt
    return (
        f"| {r['workload']} | {r['batch']} | {r['off_tok_s']:.1f} | {r['ngram_tok_s']:.1f} | {r['speedup']:.2f}x "
        f"| {fmt(r['accept_length'], '.2f')} | {fmt(r['accept_rate'], '.2f')} | {fmt(r['copied'], '.2f')} "
        f"| {r['identical']} |"
    )


if __name__ == "__main__":
    main()
