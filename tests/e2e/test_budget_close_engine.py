"""json_schema_max_tokens_close end to end on the tiny random model, pushed (logit_bias) to keep
a string open: without the option the output is cut (finish "length"); with it the output ends
complete, valid and within max_new_tokens (finish "stop")."""

from __future__ import annotations

import json
from typing import Any, Callable

import jsonschema

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def test_output_closes_validly_before_the_budget(shared_engine: Callable[..., Any]) -> None:
    engine = shared_engine()
    tok = engine.tokenizer
    keep_open = [i for i in range(len(tok)) if tok.decode([i]) == "x"]
    params = {
        "json_schema": json.dumps(SCHEMA),
        "max_new_tokens": 24,
        "temperature": 0,
        "logit_bias": {str(t): 50.0 for t in keep_open},
    }
    cut = engine.generate(input_ids=[5, 6, 7], sampling_params=params)
    closed = engine.generate(input_ids=[5, 6, 7], sampling_params={**params, "json_schema_max_tokens_close": True})
    assert cut["meta_info"]["finish_reason"]["type"] == "length"
    assert closed["meta_info"]["finish_reason"]["type"] == "stop"
    assert closed["meta_info"]["completion_tokens"] <= 24
    jsonschema.validate(json.loads(closed["text"]), SCHEMA)
    assert closed["text"][:8] == cut["text"][:8]
