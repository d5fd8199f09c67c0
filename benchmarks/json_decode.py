"""Structured decoding on CPU with the bundled model: a character-sheet regex (the shape of the
example in SGLang's README, regex written here) and a JSON schema, each with jump-forward on and
off, against unconstrained decoding of the same number of tokens per request; plus the per-step
cost of the vocabulary mask (a constrained step vs an unconstrained decode step).

    python benchmarks/json_decode.py               # 4 prompts, ~2 minutes on 2 loaded cores
    python benchmarks/json_decode.py --model-path DIR --load-format dummy --device cuda
                                                   # GPU mask overhead: DIR holds the bundled model's
                                                   # config and tokenizer, weights random

Greedy. Wall time covers the whole batch (prefill included). Mask overhead is measured without
jump-forward, so every output token of both runs is one decode step: the unconstrained run
reproduces the constrained run's per-request lengths (ignore_eos), the batch shrinks identically.
The overhead is read two ways. The acceptance figure is the wall-clock difference per step
(constrained vs unconstrained decode step; both the quicker of two runs). Beside it, the
scheduler's own count of host time spent on grammars (advance the matchers by the previous tokens,
fill the masks, launch the masking) per constrained step: on a CPU it adds to the step; on CUDA with
overlap scheduling and no jump-forward it runs while the step's forward is on the device (the
sampling waits for it: "deferred" steps), so only what does not fit under the forward shows in the
wall clock, plus the mask upload and the masking kernel.
Compile is excluded: the grammar is warmed up.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

import jsonschema

NAME = r"[A-Za-z ]{1,16}"
CHARACTER = (
    r'\{\n  "name": "' + NAME + r'",\n'
    r'  "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n'
    r'  "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n'
    r'  "occupation": "(student|teacher|auror|ministry of magic|death eater|order of the phoenix)",\n'
    r'  "wand": \{\n'
    r'    "wood": "' + NAME + r'",\n'
    r'    "core": "' + NAME + r'",\n'
    r'    "length": [0-9]{1,2}\.[0-9]{1,2}\n'
    r"  \},\n"
    r'  "alive": "(Alive|Deceased)",\n'
    r'  "patronus": "' + NAME + r'",\n'
    r'  "bogart": "' + NAME + r'"\n'
    r"\}"
)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
        "house": {"enum": ["Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff"]},
        "year_at_school": {"type": "integer", "minimum": 1, "maximum": 7},
        "wand": {
            "type": "object",
            "properties": {
                "wood": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
                "length_in_inches": {"type": "integer", "minimum": 8, "maximum": 15},
            },
            "required": ["wood", "length_in_inches"],
            "additionalProperties": False,
        },
        "alive": {"type": "boolean"},
    },
    "required": ["name", "house", "year_at_school", "wand", "alive"],
    "additionalProperties": False,
}
CHARACTERS = [
    "Hermione Granger",
    "Severus Snape",
    "Luna Lovegood",
    "Cedric Diggory",
    "Draco Malfoy",
    "Minerva McGonagall",
    "Neville Longbottom",
    "Sirius Black",
]


def prompts(engine: Any, count: int, what: str) -> list[str]:
    return [
        engine.apply_chat_template(
            [{"role": "user", "content": f"Fill in {what} for {CHARACTERS[i % 8]}, a Harry Potter character, in JSON."}]
        )
        for i in range(count)
    ]


def run(engine: Any, texts: list[str], params: Any, check: Any = None) -> dict:
    before = engine.get_server_info()
    start = time.perf_counter()
    outs = engine.generate(texts, params)
    wall = time.perf_counter() - start
    after = engine.get_server_info()
    steps = after["num_forward_steps"] - before["num_forward_steps"]
    tokens = sum(len(o["output_ids"]) for o in outs)
    valid = sum(1 for o in outs if check is None or check(o["text"]))
    return {
        "wall_s": wall,
        "tokens": tokens,
        "steps": steps,
        "tok_s": tokens / wall,
        "valid": valid,
        "lengths": [len(o["output_ids"]) for o in outs],
        "grammar_s": after["grammar_seconds"] - before["grammar_seconds"],
        "masked_steps": after["grammar_masked_steps"] - before["grammar_masked_steps"],
        "jump": sum(o["meta_info"].get("jump_forward_tokens", 0) for o in outs),
        "deferred": after.get("num_deferred_samplings", 0) - before.get("num_deferred_samplings", 0),
    }


def schema_ok(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def bench(count: int, threads: int, max_new: int, engine_kwargs: dict[str, Any]) -> dict:
    import radixlm

    results: dict[str, dict] = {}
    workloads = {
        "character regex": (
            {"regex": CHARACTER},
            lambda t: re.fullmatch(CHARACTER, t) is not None,
            "a character sheet",
        ),
        "json schema": ({"json_schema": json.dumps(SCHEMA)}, schema_ok, "a short record"),
    }
    for jump in (True, False):
        with radixlm.Engine(
            log_level="warning", num_threads=threads, disable_jump_forward=not jump, **engine_kwargs
        ) as engine:
            for name, (spec, check, what) in workloads.items():
                texts = prompts(engine, count, what)
                params = {"temperature": 0, "max_new_tokens": max_new, **spec}
                run(engine, texts[:1], params)  # warm-up: grammar compile (cached) and first forwards
                label = f"{name}, {'jump-forward' if jump else 'no jump-forward'}"
                tries = [run(engine, texts, params, check) for _ in range(1 if jump else 2)]
                results[label] = constrained = min(tries, key=lambda r: r["wall_s"])  # less load noise
                peer = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in constrained["lengths"]]
                peers = [run(engine, texts, peer) for _ in range(2)]  # the quicker of two: less load noise
                results[f"{name}, unconstrained peer ({'jf engine' if jump else 'no-jf engine'})"] = min(
                    peers, key=lambda r: r["wall_s"]
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--model-path", default=None, help="default: the bundled model")
    parser.add_argument("--load-format", default="auto", help="dummy: random weights (mask-overhead runs on a GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the engine's choice)")
    args = parser.parse_args()
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"load_format": args.load_format}
    kwargs.update({k: v for k, v in (("model_path", args.model_path), ("device", args.device)) if v})
    res = bench(args.requests, args.threads, args.max_new_tokens, kwargs)
    print(f"requests per run: {args.requests}, greedy, threads: {args.threads}")
    print("| run | output tokens | wall s | tok/s | forward steps | ms/step | jump-forward tokens | valid |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in res.items():
        print(
            f"| {label} | {r['tokens']} | {r['wall_s']:.2f} | {r['tok_s']:.1f} | {r['steps']} | "
            f"{1000 * r['wall_s'] / max(1, r['steps']):.1f} | {r['jump']} | {r['valid']}/{args.requests} |"
        )
    print()
    for name in ("character regex", "json schema"):
        jf, nojf = res[f"{name}, jump-forward"], res[f"{name}, no jump-forward"]
        speedup = nojf["wall_s"] / jf["wall_s"]
        peer = res[f"{name}, unconstrained peer (no-jf engine)"]
        step_c, step_u = nojf["wall_s"] / nojf["steps"], peer["wall_s"] / peer["steps"]
        overhead = step_c / step_u - 1
        host = nojf["grammar_s"] / max(1, nojf["masked_steps"])  # measured inside the scheduler
        direct = host / step_u
        vs_free = res[f"{name}, unconstrained peer (jf engine)"]["wall_s"] / jf["wall_s"]
        print(
            f"{name}: jump-forward end-to-end speedup {speedup:.2f}x "
            f"(target >= 1.5x{' on this workload' if name == 'character regex' else ', informational'}: "
            f"{'MET' if speedup >= 1.5 else 'NOT MET'}); constrained+jump-forward vs unconstrained same tokens: "
            f"{vs_free:.2f}x"
        )
        print(
            f"  mask overhead per decode step (acceptance, wall clock): {1000 * step_c:.2f} vs "
            f"{1000 * step_u:.2f} ms/step = {100 * overhead:+.1f}% (target <= 15%: "
            f"{'MET' if overhead <= 0.15 else 'NOT MET'}; noisy under load)"
        )
        print(
            f"  grammar host time: {1000 * host:.2f} ms per constrained step ({nojf['masked_steps']} steps) = "
            f"{100 * direct:.1f}% of an unconstrained step (informational: overlapped with the forward on CUDA "
            f"in the {nojf['deferred']} deferred steps)"
        )
    print(f"total bench wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
