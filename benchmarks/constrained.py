"""Structured output on CPU: JSON-schema generation with jump-forward on vs off, and unconstrained
generation of the same number of tokens as the peer.

Run from the repository root (the engine spawns its scheduler process, hence the main guard):

    python benchmarks/constrained.py             # bundled SmolLM2-135M-Instruct, ~3 minutes on 2 cores
    python benchmarks/constrained.py --quick     # smoke test

Greedy; one batch of chat prompts asking for a record whose schema has long fixed keys. Figures
are output tokens / wall time of the whole batch (prefill included), model steps (forwards) per
batch, and tokens per step. Jump-forward tokens are output tokens too (appended without a step).
One engine at a time so the runs do not compete for the two cores; each is warmed up first.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jsonschema

SCHEMA = {
    "type": "object",
    "properties": {
        "full_name_of_the_person": {"type": "string", "maxLength": 40},
        "year_of_birth_as_an_integer": {"type": "integer", "minimum": 1900, "maximum": 2025},
        "primary_email_address": {"type": "string", "maxLength": 40},
        "favorite_programming_language": {"enum": ["Python", "Rust", "Go", "C++", "JavaScript"]},
        "is_currently_employed_full_time": {"type": "boolean"},
        "number_of_years_of_professional_experience": {"type": "integer", "minimum": 0, "maximum": 60},
    },
    "required": [
        "full_name_of_the_person",
        "year_of_birth_as_an_integer",
        "primary_email_address",
        "favorite_programming_language",
        "is_currently_employed_full_time",
        "number_of_years_of_professional_experience",
    ],
    "additionalProperties": False,
}
NAMES = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Margaret Hamilton",
    "Ken Thompson",
    "Dennis Ritchie",
    "John McCarthy",
    "Frances Allen",
    "Leslie Lamport",
    "Tony Hoare",
    "Niklaus Wirth",
    "Radia Perlman",
    "Guido van Rossum",
]


def prompts(engine: Any, count: int) -> list[str]:
    return [
        engine.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": f"Describe {NAMES[i % len(NAMES)]} as a JSON record with name, birth year, email, "
                    "favorite language, employment and experience.",
                }
            ]
        )
        for i in range(count)
    ]


def run(engine: Any, texts: list[str], params: dict) -> dict:
    before = engine.get_server_info()["num_forward_steps"]
    start = time.perf_counter()
    outs = engine.generate(texts, params)
    wall = time.perf_counter() - start
    steps = engine.get_server_info()["num_forward_steps"] - before
    tokens = sum(len(o["output_ids"]) for o in outs)
    valid = 0
    for out in outs:
        try:
            jsonschema.validate(json.loads(out["text"]), SCHEMA)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    forced = sum(o["meta_info"].get("jump_forward_tokens", 0) for o in outs)
    return {
        "requests": len(outs),
        "output_tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_per_s": round(tokens / wall, 1),
        "forward_steps": steps,
        "tokens_per_step": round(tokens / steps, 2),
        "jump_forward_tokens": forced,
        "schema_valid": valid,
    }


def bench(count: int, max_new: int, threads: int) -> dict:
    import radixlm

    results = {}
    for label, jump in (("json, jump-forward", True), ("json, no jump-forward", False)):
        with radixlm.Engine(log_level="warning", num_threads=threads, disable_jump_forward=not jump) as engine:
            texts = prompts(engine, count)
            json_params = {"temperature": 0, "max_new_tokens": max_new, "json_schema": SCHEMA}
            run(engine, texts[:2], {**json_params, "max_new_tokens": 16})  # warm-up: compile, first forward
            results[label] = run(engine, texts, json_params)
            if jump:
                mean_len = max(1, results[label]["output_tokens"] // count)
                results["unconstrained (peer)"] = run(
                    engine, texts, {"temperature": 0, "max_new_tokens": mean_len, "ignore_eos": True}
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    count, max_new = (4, 128) if args.quick else (args.requests, args.max_new_tokens)
    results = bench(count, max_new, args.threads)
    print(
        "| run | requests | output tokens | wall s | tok/s | forward steps | tokens/step | "
        "jump-forward tokens | schema-valid |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['requests']} | {r['output_tokens']} | {r['wall_s']} | {r['tok_per_s']} | "
            f"{r['forward_steps']} | {r['tokens_per_step']} | {r['jump_forward_tokens']} | {r['schema_valid']} |"
        )


if __name__ == "__main__":
    main()
