"""Structured output on real-world JSON schemas, end to end on the bundled model (greedy).

    python benchmarks/json_schema_realworld.py                  # the 300-schema development set
    python benchmarks/json_schema_realworld.py --suite          # JSON-Schema-Test-Suite 2020-12
    python benchmarks/json_schema_realworld.py --limit 20       # smoke test
    python benchmarks/json_schema_realworld.py --tiny           # the tiny random test model instead

With `--tiny` the engine serves the tests' tiny random Llama (built in a temporary directory):
sampled (temperature 1, one seed per schema, closers and EOS favoured as in the tests) instead of
greedy, so that it finishes values; it exercises the whole path (router, lowering, compile, masks,
jump-forward) in minutes where the bundled model takes hours on a loaded two-core machine.

Per category: schemas, accepted (radixlm's router resolves it and the grammar compiles),
valid (finished and validates under the schema's own draft, every format checked), length-cut
(max_new_tokens reached inside the value), invalid (finished but fails validation: must be 0),
and the peers' coverage: how many schemas xgrammar and llguidance each accept *exactly* on
their own (xgrammar: compiles and enforces every keyword, formats included, by the audit
radixlm used before its lowering pass; llguidance: compiles without an unimplemented-keyword
error). One engine serves every schema; the prompt gives the schema (truncated) and asks for
one instance.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's radixlm, and the tests' helpers

from helpers.schema_checks import iter_errors  # noqa: E402

REALWORLD = Path(os.environ.get("RADIXLM_SCHEMA_SET", "/work/shared/data/jsonschema-realworld"))
SUITE = Path(__file__).resolve().parents[1] / "tests/data/json_schema_test_suite/draft2020-12-schemas.json"
PROMPT_SCHEMA_CHARS = 1500


def load(suite: bool) -> list[tuple[str, str, Any]]:
    """(category, name, schema) for each schema of the chosen set."""
    if suite:
        entries = json.loads(SUITE.read_text())
        return [(e["file"].removesuffix(".json"), e["description"], e["schema"]) for e in entries]
    out = []
    for path in sorted(REALWORLD.glob("*.json")):
        category, _, name = path.stem.partition("__")
        out.append((category, name, json.loads(path.read_text())))
    return out


def peers(schema: Any, tokenizer: Any) -> tuple[bool, bool]:
    """(xgrammar alone accepts it exactly, llguidance alone accepts it exactly)."""
    import llguidance
    import xgrammar

    from radixlm.constrained.schema_audit import unenforced_keyword
    from radixlm.constrained.schema_rewrite import bound_strings_as_patterns

    text = json.dumps(schema)
    try:
        xgrammar.Grammar.from_json_schema(text, any_whitespace=False)
        raw = bound_strings_as_patterns(schema)
        xgr = unenforced_keyword(raw) is None and '"format"' not in text
    except Exception:
        xgr = False
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text)
        llg = not llguidance.LLMatcher.validate_grammar(grammar, None)
    except Exception:
        llg = False
    return xgr, llg


def tiny_model() -> str:
    import tempfile

    from helpers.tiny_models import make_tiny_model

    return make_tiny_model(tempfile.mkdtemp(prefix="radixlm_tiny_"), "llama")


def request(engine: Any, schema: Any, index: int, args: argparse.Namespace) -> tuple[Any, dict]:
    """(prompt, sampling params) for one schema."""
    params: dict = {"max_new_tokens": args.max_new_tokens, "json_schema": json.dumps(schema)}
    if not args.tiny:
        return prompt(engine, schema), {**params, "temperature": 0}
    tok = engine.tokenizer
    closers = [i for i in range(len(tok)) if tok.decode([i]) in ('"', "}", "]")]
    bias = {str(t): 3.0 for t in closers + [tok.eos_token_id]}
    return [5, 6, 7], {**params, "temperature": 1.0, "seed": index, "logit_bias": bias}


def prompt(engine: Any, schema: Any) -> str:
    text = json.dumps(schema)[:PROMPT_SCHEMA_CHARS]
    message = f"Write one JSON value that is valid under this JSON schema, and nothing else.\n\n{text}"
    return engine.apply_chat_template([{"role": "user", "content": message}])


def outcome(out: dict, schema: Any) -> str:
    finish = out["meta_info"]["finish_reason"]
    kind = finish["type"] if isinstance(finish, dict) else str(finish)
    if kind == "length":
        return "length"
    if kind != "stop":
        return "failed"
    try:
        instance = json.loads(out["text"])
    except ValueError:
        return "invalid"
    return "invalid" if next(iter_errors(instance, schema), None) is not None else "valid"


def run(args: argparse.Namespace) -> dict:
    import radixlm

    entries = [e for e in load(args.suite) if e[0].startswith(args.only)][: args.limit or None]
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    refusals: collections.Counter = collections.Counter()
    invalid: list[str] = []
    kwargs = {"model_path": tiny_model(), "dtype": "float32", "max_total_tokens": 65536} if args.tiny else {}
    if args.max_total_tokens:
        kwargs["max_total_tokens"] = args.max_total_tokens
    with radixlm.Engine(log_level="warning", num_threads=args.threads, **kwargs) as engine:
        accepted = []
        for category, name, schema in entries:
            row = table[category]
            row["schemas"] += 1
            xgr, llg = peers(schema, engine.tokenizer)
            row["xgrammar"] += xgr
            row["llguidance"] += llg
            try:
                engine.grammars.resolve(radixlm_spec(schema))
                accepted.append((category, name, schema))
            except ValueError as exc:
                refusals[str(exc).split(" (at ")[0][:90]] += 1
        start = time.perf_counter()
        for i in range(0, len(accepted), args.batch):
            chunk = accepted[i : i + args.batch]
            asks = [request(engine, s, i + k, args) for k, (_, _, s) in enumerate(chunk)]
            outs = generate(engine, asks, args.tiny)
            for (category, name, schema), out in zip(chunk, outs):
                result = outcome(out, schema)
                table[category]["accepted"] += result != "failed"
                table[category][result] += 1
                if result == "invalid":
                    invalid.append(f"{category}/{name}: {out['text'][:200]!r}")
            print(f"  {min(i + args.batch, len(accepted))}/{len(accepted)} generated", file=sys.stderr, flush=True)
        wall = time.perf_counter() - start
    return {"table": table, "refusals": refusals, "invalid": invalid, "wall": wall}


def generate(engine: Any, asks: list[tuple[Any, dict]], tiny: bool) -> list[dict]:
    """One output per ask; a request the engine fails (a compile past its time bound) gets a
    stand-in output whose finish type is "failed", so one such schema does not stop the run."""

    def one_batch(batch: list[tuple[Any, dict]]) -> list[dict]:
        prompts, params = [a[0] for a in batch], [a[1] for a in batch]
        if tiny:
            return engine.generate(input_ids=prompts, sampling_params=params)
        return engine.generate(prompts, params)

    try:
        return one_batch(asks)
    except ValueError:
        outs = []
        for ask in asks:
            try:
                outs.extend(one_batch([ask]))
            except ValueError as exc:
                outs.append({"text": str(exc), "meta_info": {"finish_reason": {"type": "failed"}}})
        return outs


def radixlm_spec(schema: Any) -> Any:
    from radixlm.constrained.spec import GrammarSpec

    return GrammarSpec("json_schema", json.dumps(schema))


def report(result: dict, suite: bool) -> None:
    table = result["table"]
    cols = ["schemas", "accepted", "valid", "length", "invalid", "failed", "xgrammar", "llguidance"]
    print("| category | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    total: collections.Counter = collections.Counter()
    for category in sorted(table):
        total.update(table[category])
        if not suite:
            print(f"| {category} | " + " | ".join(str(table[category][c]) for c in cols) + " |")
    print("| **total** | " + " | ".join(str(total[c]) for c in cols) + " |")
    n = max(total["schemas"], 1)
    print(
        f"\naccepted {total['accepted']}/{n} ({100 * total['accepted'] / n:.1f} %), valid {total['valid']} "
        f"({100 * total['valid'] / n:.1f} %), length-cut {total['length']}, finished-but-invalid "
        f"{total['invalid']}, generation {result['wall']:.0f} s"
    )
    print("refusals:", json.dumps(result["refusals"].most_common(15), indent=1))
    for line in result["invalid"]:
        print("INVALID", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="store_true", help="the JSON-Schema-Test-Suite 2020-12 schemas")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--only", default="", help="categories starting with this")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-total-tokens", type=int, default=0, help="KV pool size (more requests at once)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model, sampled")
    args = parser.parse_args()
    report(run(args), args.suite)


if __name__ == "__main__":
    main()
