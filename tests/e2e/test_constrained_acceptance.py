"""Acceptance checks for structured output on a tiny random model: 50+ varied JSON
schemas generated deterministically here (nested objects, bounded arrays, enums, bounded integers
and numbers, strings with patterns and length bounds, optional properties, anyOf), each output
validated with `jsonschema`, in one batch greedy and one batch sampled; regex outputs fullmatch;
an EBNF output parses with a hand-written parser; and 40 concurrent requests mixing constrained
and unconstrained rows, the unconstrained ones equal to their alone-run greedy outputs."""

from __future__ import annotations

import json
import random
import re
from typing import Any, Iterator

import jsonschema
import pytest

import radixlm

NUM_SCHEMAS = 52
PROMPTS = [[5, 6, 7], [40, 41, 42, 43], [100, 7, 200], [9, 300, 12, 13, 14], [77, 78]]
REGEXES = [
    r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    r"[A-Z][a-z]{1,5} (is|was) (red|blue|green)",
    r"\((\d{1,3}, ){0,2}\d{1,3}\)",
    r"(true|false|null|-?[1-9]\d{0,2})",
]
# Bounded arithmetic with one level of parentheses; checked by `parse_arith` below.
EBNF = (
    'root ::= expr\nexpr ::= term (op term){0,3}\nop ::= "+" | "-" | "*"\n'
    'term ::= num | "(" num op num ")"\nnum ::= [1-9] [0-9]{0,2} | "0"'
)
PATTERNS = ["[a-z]{1,3}", "[A-Z][0-9]{2}", "(ab|cd)+x?", "[0-9a-f]{2,4}"]
WORDS = ["red", "green", "blue", "cat", "dog", "x", "yes", "no"]


def leaf(rng: random.Random) -> dict:
    kind = rng.choice(["integer", "number", "boolean", "enum", "string", "pattern", "null"])
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 100)}
    if kind == "number":
        low = rng.randint(-10, 10)
        return {"type": "number", "minimum": low, "maximum": low + rng.randint(1, 20)}
    if kind == "enum":
        return {"enum": rng.sample(WORDS, rng.randint(1, 4)) + ([3] if rng.random() < 0.3 else [])}
    if kind == "string":
        low = rng.randint(0, 3)
        return {"type": "string", "minLength": low, "maxLength": low + rng.randint(0, 4)}
    if kind == "pattern":
        return {"type": "string", "pattern": "^" + rng.choice(PATTERNS) + "$"}
    return {"type": kind}


def value(rng: random.Random, depth: int) -> dict:
    roll = rng.random()
    if depth > 0 and roll < 0.25:
        return obj(rng, depth - 1)
    if roll < 0.45:
        low = rng.randint(0, 2)
        return {
            "type": "array",
            "items": value(rng, depth - 1) if depth > 0 and rng.random() < 0.3 else leaf(rng),
            "minItems": low,
            "maxItems": low + rng.randint(0, 2),
        }
    if roll < 0.55:
        return {"anyOf": [leaf(rng), leaf(rng)]}
    return leaf(rng)


def obj(rng: random.Random, depth: int) -> dict:
    keys = rng.sample(["id", "name", "tags", "size", "kind", "meta", "score", "ok"], rng.randint(1, 4))
    props = {key: value(rng, depth) for key in keys}
    required = [key for key in keys if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def make_schemas() -> list[dict]:
    rng = random.Random(4)
    return [obj(rng, rng.randint(0, 2)) for _ in range(NUM_SCHEMAS)]


def parse_arith(text: str) -> bool:
    """Recursive-descent check of the EBNF language: term (op term){0,3}."""
    pos = 0

    def num() -> bool:
        nonlocal pos
        match = re.compile(r"0|[1-9][0-9]{0,2}").match(text, pos)
        if not match:
            return False
        pos = match.end()
        return True

    def term() -> bool:
        nonlocal pos
        if text.startswith("(", pos):
            pos += 1
            if not (num() and op() and num() and text.startswith(")", pos)):
                return False
            pos += 1
            return True
        return num()

    def op() -> bool:
        nonlocal pos
        if pos < len(text) and text[pos] in "+-*":
            pos += 1
            return True
        return False

    if not term():
        return False
    for _ in range(3):
        if pos == len(text):
            break
        if not (op() and term()):
            return False
    return pos == len(text)


@pytest.fixture(scope="module")
def engine(llama_engine: radixlm.Engine) -> Iterator[radixlm.Engine]:
    yield llama_engine
    llama_engine.check_no_leak()


@pytest.fixture(scope="module")
def bias(tiny_tokenizer: Any) -> dict[str, float]:
    """A random model rambles inside strings and numbers: nudge it towards closing tokens."""
    tok = tiny_tokenizer
    closers = [i for i in range(len(tok)) if tok.decode([i]) in ('"', "}", "]", ",")]
    return {str(t): 3.0 for t in closers + [tok.eos_token_id]}


def check_json(outs: list[dict], schemas: list[dict]) -> None:
    for out, schema in zip(outs, schemas):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", (schema, out["text"])
        jsonschema.validate(json.loads(out["text"]), schema)  # strict: no raw control chars


def test_schema_generator_is_varied() -> None:
    text = json.dumps(make_schemas())
    assert len(make_schemas()) >= 50 and make_schemas() == make_schemas()
    for needle in (
        '"minItems"',
        '"maxItems"',
        '"enum"',
        '"minimum"',
        '"maximum"',
        '"pattern"',
        '"minLength"',
        '"maxLength"',
        '"anyOf"',
        '"type": "number"',
        '"type": "object", "properties": {"',
    ):
        assert needle in text, needle
    nested = [s for s in make_schemas() if any(v.get("type") == "object" for v in s["properties"].values())]
    optional = [s for s in make_schemas() if len(s["required"]) < len(s["properties"])]
    assert len(nested) >= 5 and len(optional) >= 10


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_many_schemas_validate(engine: radixlm.Engine, bias: dict, mode: str) -> None:
    schemas = make_schemas()
    base = {"temperature": 0} if mode == "greedy" else {"temperature": 1.0}
    params = [
        {
            **base,
            "max_new_tokens": 256,
            "logit_bias": bias,
            "json_schema": json.dumps(schema),
            **({"seed": 1000 + i} if mode == "sampled" else {}),
        }
        for i, schema in enumerate(schemas)
    ]
    outs = engine.generate(input_ids=[PROMPTS[i % len(PROMPTS)] for i in range(len(schemas))], sampling_params=params)
    check_json(outs, schemas)


def test_regex_and_ebnf(engine: radixlm.Engine) -> None:
    params = [
        {"temperature": t, "seed": i, "max_new_tokens": 64, "regex": rx}
        for i, rx in enumerate(REGEXES)
        for t in (0, 1.0)
    ]
    params += [
        {"temperature": t, "seed": 7 + i, "max_new_tokens": 64, "ebnf": EBNF} for i, t in enumerate((0, 1.0, 1.0))
    ]
    outs = engine.generate(input_ids=[PROMPTS[i % len(PROMPTS)] for i in range(len(params))], sampling_params=params)
    for out, p in zip(outs, params):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["text"]
        if "regex" in p:
            assert re.fullmatch(p["regex"], out["text"]), (p["regex"], out["text"])
        else:
            assert parse_arith(out["text"]), out["text"]
    assert not parse_arith("1+") and not parse_arith("(1+2") and not parse_arith("01") and parse_arith("(1*20)-3")


def test_forty_concurrent_mixed_requests(engine: radixlm.Engine, bias: dict) -> None:
    free = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    alone = [engine.generate(input_ids=p, sampling_params=free)["output_ids"] for p in PROMPTS]
    schemas = make_schemas()[:12]
    inputs, params, expect = [], [], []
    for i in range(40):
        prompt = PROMPTS[i % len(PROMPTS)]
        if i % 2 == 0:
            inputs.append(prompt), params.append(free), expect.append(("free", alone[i % len(PROMPTS)]))
            continue
        j = i // 2
        if j < len(schemas):
            spec: dict[str, Any] = {"json_schema": json.dumps(schemas[j]), "logit_bias": bias}
            expect.append(("json", schemas[j]))
        elif j % 2:
            spec = {"regex": REGEXES[j % len(REGEXES)]}
            expect.append(("regex", REGEXES[j % len(REGEXES)]))
        else:
            spec = {"ebnf": EBNF}
            expect.append(("ebnf", None))
        inputs.append(prompt)
        params.append({"temperature": 1.0 if j % 3 else 0, "seed": j, "max_new_tokens": 256, **spec})
    outs = engine.generate(input_ids=inputs, sampling_params=params)
    assert len(outs) == 40
    for out, (kind, ref) in zip(outs, expect):
        if kind == "free":
            assert out["output_ids"] == ref
            continue
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["text"]
        if kind == "json":
            jsonschema.validate(json.loads(out["text"]), ref)
        elif kind == "regex":
            assert re.fullmatch(ref, out["text"]), out["text"]
        else:
            assert parse_arith(out["text"]), out["text"]
