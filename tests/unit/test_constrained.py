"""Structured output without an engine: limits, the schema audit, backend routing, the batched
vocab mask, both backends' grammar contract, jump-forward retokenization and the compile pool."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import torch

from radixlm.constrained.base import GrammarBackend
from radixlm.constrained.jump_forward import JumpForwardStepper
from radixlm.constrained.limits import check_regex_cost
from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.schema_audit import unenforced_keyword
from radixlm.constrained.spec import GrammarSpec
from radixlm.constrained.vocab_mask import VocabMask
from radixlm.sampling.sampler import apply_vocab_mask
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.grammar_queue import GrammarManager
from radixlm.scheduler.request import Req

EOS = 1
BACKENDS = ("xgrammar", "llguidance")


def router_for(name: str, tiny_tokenizer: Any) -> GrammarRouter:
    return GrammarRouter(
        name, tiny_tokenizer, len(tiny_tokenizer) + 8, {EOS}
    )  # model vocab padded past the tokenizer's


# -- limits and the schema audit ----------------------------------------------------------------
@pytest.mark.parametrize(
    "regex",
    [
        r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}",
        r"\d{4}-\d{2}-\d{2}",
        r"((a|aa){50}){50}",
        r"a{100000}",
        r"[{(]{3}\{2\}",
    ],
)
def test_regex_cost_accepts_ordinary_counts(regex: str) -> None:
    check_regex_cost(regex)


@pytest.mark.parametrize(
    "regex", [r"a{1000000000}", r"(a{1000}){1000}", r"(((a?){100}){100}){100}", r"x(y(z{400}){400})"]
)
def test_regex_cost_refuses_explosive_counts(regex: str) -> None:
    with pytest.raises(ValueError, match="nested counted repetition"):
        check_regex_cost(regex)


@pytest.mark.parametrize(
    "schema,keyword",
    [
        ({"not": {"type": "string"}}, "not"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"maximum": 3}, "maximum"),  # untyped: xgrammar would ignore it
        ({"type": "object", "properties": {"a": {"type": "string", "minLength": 2.5}}}, "minLength"),
        ({"$ref": "http://example.com/s.json"}, "$ref"),
    ],
)
def test_audit_names_keywords_xgrammar_would_ignore(schema: dict, keyword: str) -> None:
    problem = unenforced_keyword(schema)
    assert problem is not None and problem.startswith(keyword)


def test_audit_passes_typical_object_schemas() -> None:
    schema = {
        "type": "object",
        "title": "Person",
        "$defs": {"age": {"type": "integer", "minimum": 0}},
        "properties": {
            "name": {"type": "string"},
            "age": {"$ref": "#/$defs/age"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            "kind": {"anyOf": [{"type": "null"}, {"const": "x"}]},
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    assert unenforced_keyword(schema) is None
    # xgrammar counts an overlong UTF-8 sequence as one character (it decodes to several U+FFFD)
    bounded = {**schema, "properties": {**schema["properties"], "name": {"type": "string", "maxLength": 20}}}
    assert unenforced_keyword(bounded).startswith("maxLength (at #/properties/name)")


# -- routing ------------------------------------------------------------------------------------
def test_router_falls_back_to_a_backend_that_enforces_the_keyword(tiny_tokenizer: Any) -> None:
    router = router_for("xgrammar", tiny_tokenizer)
    typed = '{"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}}}'
    assert router.resolve(GrammarSpec("json_schema", typed)).name == "xgrammar"
    assert router.resolve(GrammarSpec("json_schema", '{"maximum": 3}')).name == "llguidance"
    # response_format json_object: strict xgrammar would allow only "{}", llguidance any object.
    assert router.resolve(GrammarSpec("json_schema", '{"type": "object"}')).name == "llguidance"


def test_router_refusals_name_the_problem(tiny_tokenizer: Any) -> None:
    router = router_for("xgrammar", tiny_tokenizer)
    cases = [
        ("json_schema", '{"type": "array", "contains": {"multipleOf": 3}, "maxContains": 2}', "contains"),
        ("json_schema", "{bad", "not valid JSON"),
        ("regex", "(a", "regex"),
        ("ebnf", "root ::= ", "EBNF"),
        ("regex", "a{1000000000}", "repetition"),
    ]
    for kind, text, needle in cases:
        with pytest.raises(ValueError, match=needle):
            router.resolve(GrammarSpec(kind, text))
    with pytest.raises(ValueError, match="grammar-backend none"):
        router_for("none", tiny_tokenizer).resolve(GrammarSpec("regex", "a"))


# -- the batched mask ---------------------------------------------------------------------------
def test_apply_vocab_mask_touches_only_constrained_rows() -> None:
    logits = torch.randn(3, 40)
    bitmask = torch.zeros(1, 2, dtype=torch.int32)
    bitmask[0, 0] = 1 << 5
    bitmask[0, 1] = 1 << 3  # token 35
    before = logits.clone()
    apply_vocab_mask(logits, bitmask, torch.tensor([1]))
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    assert torch.isfinite(logits[1]).nonzero().view(-1).tolist() == [5, 35]


def test_vocab_mask_never_allows_padding_ids() -> None:
    class AllowAll:
        def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
            bitmask[row] = -1

    reqs = [Req("a", [3], SamplingParams()), Req("b", [3], SamplingParams())]
    reqs[1].grammar = AllowAll()
    bitmask, rows = VocabMask(model_vocab=70, tokenizer_vocab=50).fill(reqs)
    assert rows.tolist() == [1]
    logits = apply_vocab_mask(torch.zeros(2, 70), bitmask, rows)
    assert torch.isfinite(logits[1]).nonzero().view(-1).tolist() == list(range(50))
    assert VocabMask(70, 50).fill(reqs[:1]) is None  # no grammar in the batch: the stage is skipped


# -- the grammar contract, per backend ----------------------------------------------------------
def new_grammar(tiny_tokenizer: Any, backend: str, kind: str, text: str) -> Any:
    chosen = router_for(backend, tiny_tokenizer).resolve(GrammarSpec(kind, text))
    assert chosen.name == backend
    return chosen.new_grammar(chosen.compile(GrammarSpec(kind, text)))


def allowed(grammar: Any, vocab: int) -> list[int]:
    bitmask = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32)
    grammar.fill_vocab_mask(bitmask, 0)
    return apply_vocab_mask(torch.zeros(1, vocab), bitmask, torch.tensor([0]))[0].isfinite().nonzero().view(-1).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_grammar_contract(tiny_tokenizer: Any, backend: str) -> None:
    vocab = len(tiny_tokenizer) + 8
    grammar = new_grammar(tiny_tokenizer, backend, "regex", "hello (world|there)")
    assert grammar.try_jump_forward() == "hello "
    ids = tiny_tokenizer.encode("hello ", add_special_tokens=False)
    assert all(grammar.accept_token(t) for t in ids)
    assert grammar.try_jump_forward() == ""  # a choice: world or there
    choices = {tiny_tokenizer.decode([t]) for t in allowed(grammar, vocab)}
    assert choices and all("world".startswith(c) or "there".startswith(c) for c in choices)
    fork = grammar.copy()
    for t in tiny_tokenizer.encode("world", add_special_tokens=False):
        assert fork.accept_token(t)
    assert allowed(fork, vocab) == [EOS]
    assert not grammar.accept_token(EOS)  # the copy moved on, the original did not
    assert fork.accept_token(EOS) and fork.is_terminated()
    grammar.rollback(len(ids))
    assert grammar.try_jump_forward() == "hello "


@pytest.mark.parametrize("backend", BACKENDS)
def test_jump_forward_retokenizes_the_boundary(tiny_tokenizer: Any, backend: str) -> None:
    key = "the quick brown fox"
    schema = json.dumps({"type": "object", "properties": {key: {"type": "boolean"}}, "required": [key]})
    grammar = new_grammar(tiny_tokenizer, backend, "json_schema", schema)
    req = Req("r", [5, 6], SamplingParams())
    req.grammar = grammar
    first = tiny_tokenizer.encode("{", add_special_tokens=False)[0]
    tokens = JumpForwardStepper({EOS}, tiny_tokenizer).advance(req, first)
    text = tiny_tokenizer.decode(tokens)
    assert text == '{"the quick brown fox": '
    assert tokens == tiny_tokenizer.encode(text, add_special_tokens=False)  # the tokenizer's own split
    assert req.jump_forward_tokens == len(tokens) - 1 > 0
    assert grammar.try_jump_forward() == ""  # the grammar has accepted exactly `tokens`
    assert {tiny_tokenizer.decode([t]) for t in allowed(grammar, len(tiny_tokenizer) + 8)} <= {
        "t",
        "tr",
        "tru",
        "true",
        "f",
        "fa",
        "fal",
        "fals",
        "false",
    }


def test_json_object_admits_members(tiny_tokenizer: Any) -> None:
    grammar = new_grammar(tiny_tokenizer, "llguidance", "json_schema", '{"type": "object"}')
    assert grammar.accept_token(tiny_tokenizer.encode("{", add_special_tokens=False)[0])
    assert any(tiny_tokenizer.decode([t]).startswith('"') for t in allowed(grammar, len(tiny_tokenizer) + 8))


# -- the compile pool -----------------------------------------------------------------------------
class SlowBackend(GrammarBackend):
    """Compiles instantly, except specs containing "slow", which block until released."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()

    def check(self, spec: GrammarSpec) -> None:
        pass

    def compile(self, spec: GrammarSpec) -> Any:
        if "slow" in spec.text:
            self.release.wait(10)
        return spec.text

    def new_grammar(self, compiled: Any) -> Any:
        class Anything:
            def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
                bitmask[row] = -1

        return Anything()


class FixedRouter:
    def __init__(self, backend: GrammarBackend) -> None:
        self.backend = backend

    def resolve(self, spec: GrammarSpec) -> GrammarBackend:
        return self.backend


def test_compile_pool_bounds_time_and_never_blocks_the_others() -> None:
    backend = SlowBackend()
    manager = GrammarManager(FixedRouter(backend), vocab_size=64, timeout_s=0.3, workers=1)  # fast queues behind slow
    slow, fast, plain = (
        Req(rid, [3], SamplingParams(regex=text)) for rid, text in (("slow", "slow"), ("fast", "fast"), ("plain", None))
    )
    assert manager.admit(slow) and manager.admit(fast) and not manager.admit(plain)
    deadline = time.monotonic() + 5
    ready: list = []
    failed: list = []
    while (not ready or not failed) and time.monotonic() < deadline:
        got_ready, got_failed = manager.collect()
        ready += got_ready
        failed += got_failed
        manager.wait(0.05)
    backend.release.set()
    assert [r.rid for r in ready] == ["fast"] and ready[0].grammar is not None
    assert [r.rid for r in failed] == ["slow"] and "took longer" in failed[0].error
    assert manager.num_pending() == 0
    again = Req("again", [3], SamplingParams(regex="slow"))
    assert manager.admit(again)
    assert manager.collect() == ([], [again]) and "took longer" in again.error  # refused at once
    manager.shutdown()


@pytest.mark.parametrize(
    "schema,problem",
    [
        ({"type": "object", "required": ["a"]}, "required"),
        ({"type": "string", "enum": ["a", 1]}, "type beside enum"),
        ({"type": "string", "minLength": 2, "const": "abc"}, "minLength beside const"),
    ],
)
def test_audit_catches_silently_dropped_siblings(schema: dict, problem: str) -> None:
    assert problem in (unenforced_keyword(schema) or "")


def test_server_args_grammar_flags() -> None:
    from radixlm.config.server_args import ServerArgs

    assert ServerArgs(model_path="x").grammar_backend == "xgrammar"
    assert ServerArgs(model_path="x", grammar_backend="none", disable_jump_forward=True).disable_jump_forward
    with pytest.raises(ValueError, match="grammar_backend"):
        ServerArgs(model_path="x", grammar_backend="outlines")


# -- schema rewrites for xgrammar ---------------------------------------------------------------
BOUNDED = {
    "type": "object",
    "properties": {
        "a": {"type": "string", "minLength": 1, "maxLength": 4},
        "b": {"type": "array", "items": {"type": "string", "minLength": 2}},
        "c": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}]},
    },
    "required": ["a", "b", "c"],
    "additionalProperties": False,
}


def xgrammar_accepts(schema: dict, text: str) -> bool:
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    from radixlm.constrained.schema_rewrite import bound_strings_as_patterns

    rewritten = json.dumps(bound_strings_as_patterns(schema))
    return _is_grammar_accept_string(
        xgrammar.Grammar.from_json_schema(rewritten, any_whitespace=False, separators=(",", ":")), text
    )


@pytest.mark.parametrize(
    "text,ok",
    [
        ('{"a":"abcd","b":["xy","xyz"],"c":""}', True),
        ('{"a":"é","b":[],"c":null}', True),
        ('{"a":"a\x15","b":[],"c":null}', False),  # raw control character: not JSON (xgrammar 0.2.8 admits it)
        ('{"a":"a\nb","b":[],"c":null}', False),
        ('{"a":"","b":[],"c":null}', False),
        ('{"a":"abcde","b":[],"c":null}', False),
        ('{"a":"a","b":["x"],"c":null}', False),
        ('{"a":"a","b":[],"c":"x"}', False),
    ],
)
def test_length_bounded_strings_are_strict_json(text: str, ok: bool) -> None:
    import jsonschema

    assert xgrammar_accepts(BOUNDED, text) is ok
    if ok:  # the rewrite accepts only instances of the original schema
        jsonschema.validate(json.loads(text), BOUNDED)


def test_length_bounded_strings_admit_only_utf8() -> None:
    """An encoded surrogate (ED A0 80) is not UTF-8; xgrammar's own class admits it, so a sampled
    string decoded to three U+FFFD and broke maxLength (seen in tests/e2e/test_tools_reasoning.py)."""
    import xgrammar

    from radixlm.constrained.schema_rewrite import bound_strings_as_patterns

    schema = json.dumps(bound_strings_as_patterns({"type": "string", "maxLength": 1}))
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([bytes([b]) for b in range(256)]))
    compiled = compiler.compile_grammar(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False))

    def accepts(data: bytes) -> bool:
        matcher = xgrammar.GrammarMatcher(compiled)
        return all(matcher.accept_token(b) for b in data)  # through the closing quote

    assert accepts('"世"'.encode()) and accepts('"\U0001f642"'.encode())
    assert not accepts(b'"\xed\xa0\x80"') and not accepts(b'"\xed\xbf\xbf"')


def test_length_beside_pattern_goes_to_a_backend_that_enforces_both(tiny_tokenizer: Any) -> None:
    spec = '{"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}'  # xgrammar would drop maxLength
    assert unenforced_keyword(json.loads(spec)).startswith("maxLength beside pattern")
    assert router_for("xgrammar", tiny_tokenizer).resolve(GrammarSpec("json_schema", spec)).name == "llguidance"
