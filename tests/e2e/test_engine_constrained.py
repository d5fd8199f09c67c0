"""Structured output end to end on a tiny random model: regexes, EBNF, JSON schemas, mixed
batches, jump-forward (fewer steps, same text where the output is forced), bad specs → ValueError
(400 over HTTP), and KV invariants under a tiny paged pool."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterator

import httpx
import jsonschema
import pytest

import radixlm

GREEDY = {"temperature": 0, "max_new_tokens": 64}
PROMPTS = [[5, 6, 7], [40, 41, 42, 43], [100, 7, 200], [9, 300, 12, 13, 14]]
IP = r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}"
DATE = r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
ALTERNATION = r"(cat|dog|bird|fish)(s| and (cat|dog))?"
EBNF = 'root ::= greeting " " name "!"\ngreeting ::= "hello" | "hi" | "good morning"\nname ::= [a-z]{1,8} | "world"'
LONG_KEYS = {
    "type": "object",
    "properties": {
        "first_extremely_long_property_name": {"type": "boolean"},
        "second_property_with_a_long_name": {"enum": ["alpha", "beta"]},
        "third_long_key_holding_a_small_integer": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": [
        "first_extremely_long_property_name",
        "second_property_with_a_long_name",
        "third_long_key_holding_a_small_integer",
    ],
    "additionalProperties": False,
}
FORCED = {  # every character is determined: jump-forward must not change the text
    "type": "object",
    "properties": {"a_long_constant_key": {"const": "a constant value"}, "version": {"const": 2}},
    "required": ["a_long_constant_key", "version"],
    "additionalProperties": False,
}


def start(path: str, **kwargs: Any) -> radixlm.Engine:
    return radixlm.Engine(path, log_level="warning", max_total_tokens=4096, num_threads=1, **kwargs)


@pytest.fixture(scope="module", params=["xgrammar", "llguidance"])
def engine(shared_engine: Callable[..., radixlm.Engine], request: pytest.FixtureRequest) -> Iterator[radixlm.Engine]:
    eng = shared_engine(grammar_backend=request.param)
    yield eng
    eng.check_no_leak()


@pytest.fixture(scope="module")
def no_jump(tiny_llama_dir: str) -> Iterator[radixlm.Engine]:
    with start(tiny_llama_dir, disable_jump_forward=True) as eng:
        yield eng
        eng.check_no_leak()


def steps(engine: radixlm.Engine) -> int:
    return engine.get_server_info()["num_forward_steps"]


@pytest.mark.parametrize("regex", [IP, DATE, ALTERNATION], ids=["ip", "date", "alternation"])
def test_regex_outputs_match(engine: radixlm.Engine, regex: str) -> None:
    outs = engine.generate(input_ids=PROMPTS, sampling_params={**GREEDY, "regex": regex})
    sampled = engine.generate(
        input_ids=PROMPTS,
        sampling_params=[
            {"temperature": 1.0, "seed": i, "max_new_tokens": 64, "regex": regex} for i in range(len(PROMPTS))
        ],
    )
    for out in outs + sampled:
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
        assert re.fullmatch(regex, out["text"]), out["text"]


def test_ebnf_outputs_match(engine: radixlm.Engine) -> None:
    outs = engine.generate(input_ids=PROMPTS, sampling_params={**GREEDY, "ebnf": EBNF})
    for out in outs:
        assert re.fullmatch(r"(hello|hi|good morning) ([a-z]{1,8}|world)!", out["text"]), out["text"]


def test_json_schema_object_param_and_n2(engine: radixlm.Engine) -> None:
    outs = engine.generate(
        input_ids=PROMPTS[0],
        sampling_params={"temperature": 1.0, "seed": 3, "n": 2, "max_new_tokens": 128, "json_schema": LONG_KEYS},
    )
    for out in outs:
        jsonschema.validate(json.loads(out["text"]), LONG_KEYS)


def test_json_object_admits_any_object(engine: radixlm.Engine) -> None:
    outs = engine.generate(
        input_ids=PROMPTS * 2,
        sampling_params=[
            {"temperature": 1.0, "seed": i, "max_new_tokens": 96, "json_schema": {"type": "object"}} for i in range(8)
        ],
    )
    finished = [json.loads(o["text"]) for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
    assert finished and all(isinstance(obj, dict) for obj in finished)


def test_mixed_batch_keeps_unconstrained_outputs(engine: radixlm.Engine) -> None:
    """Constrained rows (masked, some jumping forward, which turns decode steps into multi-token
    extends) must not change the unconstrained rows' greedy tokens."""
    alone = [engine.generate(input_ids=p, sampling_params={**GREEDY, "ignore_eos": True}) for p in PROMPTS[:2]]
    params = [
        {**GREEDY, "ignore_eos": True},
        {**GREEDY, "json_schema": LONG_KEYS, "max_new_tokens": 128},
        {**GREEDY, "ignore_eos": True},
        {**GREEDY, "regex": IP},
    ]
    mixed = engine.generate(input_ids=[PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[3]], sampling_params=params)
    assert mixed[0]["output_ids"] == alone[0]["output_ids"]
    assert mixed[2]["output_ids"] == alone[1]["output_ids"]
    jsonschema.validate(json.loads(mixed[1]["text"]), LONG_KEYS)
    assert mixed[1]["meta_info"]["jump_forward_tokens"] > 0
    assert re.fullmatch(IP, mixed[3]["text"])


def test_jump_forward_saves_steps_and_keeps_forced_text(engine: radixlm.Engine, no_jump: radixlm.Engine) -> None:
    """Jump-forward appends forced text retokenized by the tokenizer, while without it the model
    spells the same text with whatever tokens it picks under the mask: token ids legitimately
    differ, and with them the context of later free choices. So: fully forced output has the same
    text, free output is schema-valid either way, and jump-forward runs fewer model steps."""
    results = {}
    for name, eng in (("jump", engine), ("plain", no_jump)):
        before = steps(eng)
        forced = eng.generate(input_ids=PROMPTS[0], sampling_params={**GREEDY, "json_schema": FORCED})
        free = eng.generate(
            input_ids=PROMPTS[1], sampling_params={**GREEDY, "json_schema": LONG_KEYS, "max_new_tokens": 256}
        )
        results[name] = (forced, free, steps(eng) - before)
    (jump_forced, jump_free, jump_steps), (plain_forced, plain_free, plain_steps) = results["jump"], results["plain"]
    assert jump_forced["text"] == plain_forced["text"] == '{"a_long_constant_key": "a constant value", "version": 2}'
    for out in (jump_free, plain_free):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), LONG_KEYS)
    assert jump_forced["meta_info"]["jump_forward_tokens"] > 0 and jump_free["meta_info"]["jump_forward_tokens"] > 0
    assert plain_forced["meta_info"]["jump_forward_tokens"] == plain_free["meta_info"]["jump_forward_tokens"] == 0
    assert jump_steps < plain_steps / 2


def test_forced_tokens_have_no_logprob(engine: radixlm.Engine) -> None:
    out = engine.generate(
        input_ids=PROMPTS[0], sampling_params={**GREEDY, "json_schema": FORCED}, return_logprob=True, top_logprobs_num=2
    )
    meta = out["meta_info"]
    assert len(meta["output_token_logprobs"]) == len(out["output_ids"]) == len(meta["output_top_logprobs"])
    forced = [lp for lp, _ in meta["output_token_logprobs"] if lp is None]
    assert len(forced) == meta["jump_forward_tokens"] > 0
    assert [t for _, t in meta["output_token_logprobs"]] == out["output_ids"]


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"regex": "(a"}, "regex"),
        ({"regex": "a{1000000000}"}, "repetition"),
        ({"json_schema": "{not json"}, "not valid JSON"),
        ({"json_schema": {"type": "array", "contains": {"multipleOf": 3}, "maxContains": 2}}, "contains"),
        ({"json_schema": {"type": "string", "minLength": 5, "maxLength": 2}}, "minLength|admits no"),
        ({"ebnf": 'root ::= ("a"'}, "EBNF"),
    ],
)
def test_bad_specs_raise_and_the_engine_keeps_serving(engine: radixlm.Engine, params: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        engine.generate(input_ids=PROMPTS[0], sampling_params={**GREEDY, **params})
    assert re.fullmatch(DATE, engine.generate(input_ids=PROMPTS[0], sampling_params={**GREEDY, "regex": DATE})["text"])


def test_compile_failure_in_the_scheduler_is_a_value_error(engine: radixlm.Engine) -> None:
    """The front's cheap check passes an empty character class; the scheduler's compile finds
    that the grammar admits no output and refuses the request (abort, status 400)."""
    if engine.server_args.grammar_backend != "xgrammar":
        pytest.skip("llguidance compiles the empty language to 'end of output only'")
    with pytest.raises(ValueError, match="admits no output"):
        engine.generate(input_ids=PROMPTS[0], sampling_params={**GREEDY, "regex": r"[^\s\S]"})
    assert engine.get_server_info()["num_grammar_pending_reqs"] == 0


def test_paged_tiny_pool_with_retraction(tiny_llama_dir: str) -> None:
    """Pages of 4 and a pool too small for the batch: jump-forward's multi-token steps must
    allocate whole pages, survive retraction, and leave no slot leaked."""
    with radixlm.Engine(tiny_llama_dir, log_level="warning", max_total_tokens=160, page_size=4, num_threads=1) as eng:
        params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 60, "json_schema": LONG_KEYS} for i in range(6)]
        outs = eng.generate(input_ids=[p * 3 for p in PROMPTS[:3]] * 2, sampling_params=params)
        assert eng.get_server_info()["num_retracted_reqs"] > 0
        eng.check_no_leak()
    for out in outs:
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            jsonschema.validate(json.loads(out["text"]), LONG_KEYS)
        else:
            assert out["meta_info"]["finish_reason"]["type"] == "length"


def test_http_response_format_and_400(url: str) -> None:
    schema_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": FORCED}}
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "max_tokens": 96,
        "response_format": schema_format,
    }
    ok = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert ok.status_code == 200, ok.text
    content = ok.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"a_long_constant_key": "a constant value", "version": 2}
    bad = httpx.post(f"{url}/v1/chat/completions", json={**body, "response_format": None, "regex": "(a"}, timeout=60)
    assert bad.status_code == 400 and "regex" in bad.json()["error"]["message"]
    bad = httpx.post(
        f"{url}/generate", json={"input_ids": [5, 6], "sampling_params": {"json_schema": "{x"}}, timeout=60
    )
    assert bad.status_code == 400 and "JSON" in bad.text
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
