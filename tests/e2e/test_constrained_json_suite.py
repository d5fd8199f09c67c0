"""The official JSON-Schema-Test-Suite (draft 2020-12 schemas, tests/data/json_schema_test_suite)
against each grammar backend: every schema is either accepted, in which case generated output
validates against it with `jsonschema`, or refused with a ValueError (a 400 over HTTP) that names
the keyword or the problem. Generation runs on a deterministic sample of SAMPLE accepted schemas
per backend (the whole suite takes minutes on two CPU cores); coverage counts are printed."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest

import radixlm
from radixlm.constrained.base import UnsupportedSpec
from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.spec import GrammarSpec

SUITE = Path(__file__).parents[1] / "data" / "json_schema_test_suite" / "draft2020-12-schemas.json"
SAMPLE = 60
MIN_ACCEPTED = {"xgrammar": 150, "llguidance": 150}  # of 368; measured 173 and 162


def load_suite() -> list[dict]:
    return json.loads(SUITE.read_text())


def triage(backend: str, tokenizer: Any) -> tuple[list[tuple[dict, str]], dict[str, list[str]]]:
    """(accepted (entry, backend that compiles it)), refusals by kind ("keyword" / "invalid")."""
    router = GrammarRouter(backend, tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    accepted, refused = [], collections.defaultdict(list)
    for entry in load_suite():
        try:
            accepted.append((entry, router.resolve(GrammarSpec("json_schema", json.dumps(entry["schema"]))).name))
        except UnsupportedSpec as exc:
            refused["keyword"].append(str(exc))
        except ValueError as exc:
            refused["invalid"].append(str(exc))
    return accepted, refused


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_suite_schemas_validate_or_are_refused(
    shared_engine: Callable[..., radixlm.Engine], tiny_tokenizer: Any, backend: str
) -> None:
    accepted, refused = triage(backend, tiny_tokenizer)
    by_backend = collections.Counter(name for _, name in accepted)
    print(
        f"\n[{backend}] accepted {len(accepted)}/{len(load_suite())} {dict(by_backend)}; refused: "
        f"{len(refused['keyword'])} for a keyword, {len(refused['invalid'])} as invalid/unsatisfiable"
    )
    assert len(accepted) >= MIN_ACCEPTED[backend]
    for message in refused["keyword"]:
        assert "keyword" in message or "Unimplemented keys" in message, message
    sample = random.Random(0).sample(accepted, min(SAMPLE, len(accepted)))
    closers = [i for i in range(len(tiny_tokenizer)) if tiny_tokenizer.decode([i]) in ('"', "}", "]")]
    bias = {str(t): 3.0 for t in closers + [tiny_tokenizer.eos_token_id]}  # a random model would ramble
    params = [
        {
            "temperature": 1.0,
            "seed": i,
            "max_new_tokens": 192,
            "logit_bias": bias,
            "json_schema": json.dumps(entry["schema"]),
        }
        for i, (entry, _) in enumerate(sample)
    ]
    engine = shared_engine(grammar_backend=backend)
    outs = engine.generate(input_ids=[[5, 6, 7]] * len(sample), sampling_params=params)
    engine.check_no_leak()
    finished = 0
    for (entry, _name), out in zip(sample, outs):
        if out["meta_info"]["finish_reason"]["type"] != "stop":
            continue
        finished += 1
        instance = json.loads(out["text"])
        jsonschema.validate(instance, entry["schema"], cls=jsonschema.Draft202012Validator)
    print(f"[{backend}] generated {len(sample)}, finished {finished}, all finished outputs valid")
    assert finished >= 0.9 * len(sample)


def test_refused_schemas_raise_value_error_naming_the_keyword(llama_engine: radixlm.Engine) -> None:
    schemas = [
        {"type": "array", "contains": {"multipleOf": 3}, "maxContains": 2},
        {"not": {"pattern": "^a"}},
        {"type": "object", "propertyNames": {"maxLength": 3}, "patternProperties": {"^x": {}}},
    ]
    for schema, keyword in zip(schemas, ["contains", "not", "propertyNames"]):
        with pytest.raises(ValueError, match=keyword):
            llama_engine.generate(input_ids=[5, 6], sampling_params={"json_schema": schema})
