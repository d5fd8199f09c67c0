"""json_schema_max_tokens_close (radixlm/constrained/budget_close.py): near the token budget the
mask forces a completion, so an output that would be cut ends complete and valid instead. The
"model" here is adversarial: it always takes the allowed token that is no closer (a letter or
an opening bracket where allowed), the way a looping model keeps a value open."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch

from radixlm.constrained.budget_close import ClosingGrammar, closer_tokens
from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.spec import GrammarSpec
from radixlm.sampling.sampling_params import SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"type": "string"}}, "n": {"type": "integer"}},
    "required": ["tags", "n"],
}


def decode(grammar: Any, tokenizer: Any, budget: int, eos: int) -> tuple[list[int], bool]:
    """Run the adversarial policy for at most `budget` tokens: (tokens, grammar terminated)."""
    words = (len(tokenizer) + 31) // 32
    keep_open = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) in ("x", "y", "[", "1")]
    out: list[int] = []
    while len(out) < budget and not grammar.is_terminated():
        bitmask = torch.zeros((1, words), dtype=torch.int32)
        grammar.fill_vocab_mask(bitmask, 0)
        allowed = [t for t in range(len(tokenizer)) if bitmask[0, t // 32] >> (t % 32) & 1]
        token = next((t for t in keep_open if t in allowed), allowed[0])
        assert grammar.accept_token(token)
        out.append(token)
    return out, grammar.is_terminated()


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_budget_closes_the_json_validly_where_it_would_be_cut(tiny_tokenizer: Any, backend: str) -> None:
    eos = tiny_tokenizer.eos_token_id
    router = GrammarRouter(backend, tiny_tokenizer, len(tiny_tokenizer), {eos})
    spec = GrammarSpec("json_schema", json.dumps(SCHEMA))
    chosen = router.resolve(spec)
    compiled = chosen.compile(spec)
    budget = 40

    cut, done = decode(chosen.new_grammar(compiled), tiny_tokenizer, budget, eos)
    assert not done and len(cut) == budget  # without the option the policy never finishes

    grammar = ClosingGrammar(chosen.new_grammar(compiled), budget, closer_tokens(tiny_tokenizer, {eos}))
    out, done = decode(grammar, tiny_tokenizer, budget, eos)
    assert done and len(out) <= budget
    text = tiny_tokenizer.decode([t for t in out if t != eos])
    jsonschema.validate(json.loads(text), SCHEMA)
    assert text.startswith(tiny_tokenizer.decode(cut[: budget // 2]))  # free until near the budget


def test_copy_and_rollback_keep_the_count(tiny_tokenizer: Any) -> None:
    eos = tiny_tokenizer.eos_token_id
    router = GrammarRouter("llguidance", tiny_tokenizer, len(tiny_tokenizer), {eos})
    spec = GrammarSpec("json_schema", json.dumps(SCHEMA))
    backend = router.resolve(spec)
    grammar = ClosingGrammar(backend.new_grammar(backend.compile(spec)), 30, closer_tokens(tiny_tokenizer, {eos}))
    for token in tiny_tokenizer.encode('{"tags": ["a', add_special_tokens=False):
        assert grammar.accept_token(token)
    used = grammar.used
    twin = grammar.copy()
    grammar.rollback(2)
    assert (grammar.used, twin.used) == (used - 2, used)


def test_the_option_needs_json_schema() -> None:
    params = SamplingParams(json_schema_max_tokens_close=True, regex="a+")
    with pytest.raises(ValueError, match="json_schema_max_tokens_close: needs json_schema"):
        params.validate(100)
    SamplingParams(json_schema_max_tokens_close=True, json_schema="{}").validate(100)


def test_openai_bodies_pass_the_field_through() -> None:
    from radixlm.entrypoints.http.field_policy import check_fields
    from radixlm.entrypoints.http.openai_common import sampling_params
    from radixlm.entrypoints.http.protocol import ChatCompletionRequest

    body = ChatCompletionRequest(
        messages=[{"role": "user", "content": "hi"}], json_schema={"type": "object"}, json_schema_max_tokens_close=True
    )
    check_fields(body, "chat")  # declared: no 400
    assert sampling_params(body, 8, 100)["json_schema_max_tokens_close"] is True
    assert "json_schema_max_tokens_close" not in sampling_params(
        body.model_copy(update={"json_schema_max_tokens_close": False}), 8, 100
    )
