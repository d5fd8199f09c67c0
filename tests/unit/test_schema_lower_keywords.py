"""The schema lowering pass beyond the logic rewrites (those: test_schema_lower.py): annotations and
unknown keywords dropped (property names kept, refs into them hoisted), anchors, the older drafts
read by their `$schema`, format patterns that produce only strings their format checker accepts,
and the router's choice of backend for what is lowered and what stays unenforceable."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import jsonschema
import pytest
from helpers.schema_checks import is_valid, strict_format_checker
from helpers.schema_lowering import ONE_OF_BY_CONST, VALUES, lowered_agrees
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.schema_formats import FORMAT_PATTERNS, format_pattern
from radixlm.constrained.schema_lower import lower_schema
from radixlm.constrained.schema_walk import KNOWN, walk
from radixlm.constrained.spec import GrammarSpec


# -- annotations and unknown keywords ---------------------------------------------------------------
def test_annotations_and_unknown_keywords_are_dropped_everywhere_but_property_names_stay() -> None:
    schema = {
        "title": "t",
        "alias": "x",
        "type": "object",
        "properties": {
            "description": {"type": "string", "description": "a property named description", "deprecated": True},
            "ref": {
                "$ref": "#/definitions/n",
                "description": "beside $ref",
                "examples": [1],
                "markdownDescription": "m",
            },
        },
        "definitions": {"n": {"type": "integer", "$comment": "c", "readOnly": True, "x-extension": {"a": 1}}},
        "additionalProperties": False,
    }
    lowered = lower_schema(schema)
    assert set(lowered["properties"]) == {"description", "ref"}
    assert lowered["properties"]["ref"] == {"$ref": "#/definitions/n"}
    assert all(set(node) <= KNOWN for node in walk(lowered))
    assert lowered["definitions"]["n"] == {"type": "integer"}


def test_refs_into_unknown_keywords_are_hoisted_not_lost() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/stuff/n"}}, "stuff": {"n": {"type": "integer"}}}
    lowered = lower_schema(schema)
    ref = lowered["properties"]["a"]["$ref"]
    assert ref.startswith("#/$defs/") and lowered["$defs"][ref.split("/")[-1]] == {"type": "integer"}


@pytest.mark.parametrize("anchor", ["$anchor", "$dynamicAnchor"])
def test_anchor_refs_resolve(anchor: str) -> None:
    schema = {"type": "array", "items": {"$ref": "#num"}, "$defs": {"n": {anchor: "num", "type": "integer"}}}
    assert not is_valid(["s"], lower_schema(schema)) and is_valid([3], lower_schema(schema))


def test_an_unresolved_anchor_is_refused_not_guessed(tiny_tokenizer: Any) -> None:
    router = GrammarRouter("xgrammar", tiny_tokenizer, len(tiny_tokenizer), {tiny_tokenizer.eos_token_id})
    schema = {"type": "array", "items": {"$ref": "#nowhere"}}
    with pytest.raises(ValueError, match="nowhere"):
        router.resolve(GrammarSpec("json_schema", json.dumps(schema)))


# -- older drafts -----------------------------------------------------------------------------------
DRAFTS = {
    "draft-04 boolean exclusiveMaximum and id": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "id": "http://example.com/s",
        "type": "number",
        "maximum": 5,
        "exclusiveMaximum": True,
        "minimum": 1,
        "exclusiveMinimum": False,
    },
    "draft-04 dependencies (both kinds)": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"a": {}, "b": {"type": "integer"}, "c": {}},
        "dependencies": {"a": ["b"], "c": {"properties": {"b": {"minimum": 3}}}},
    },
    "draft-07 tuple items and additionalItems": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "array",
        "items": [{"type": "integer"}, {"type": "string"}],
        "additionalItems": False,
    },
    "draft-07 keywords beside $ref are ignored": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"n": {"type": "integer"}},
        "properties": {"a": {"$ref": "#/definitions/n", "minimum": 5}},
        "type": "object",
    },
    "draft-06 definitions": {
        "$schema": "http://json-schema.org/draft-06/schema#",
        "definitions": {"s": {"type": "string", "maxLength": 2}},
        "type": "array",
        "items": {"$ref": "#/definitions/s"},
    },
}


@pytest.mark.parametrize("name", sorted(DRAFTS))
def test_older_drafts_are_read_by_their_schema_keyword(name: str) -> None:
    schema = DRAFTS[name]

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(VALUES | st.sampled_from([{"a": 1}, {"a": 7}, [1, "x"], [1, "x", 2], 5, 1, 4.5, ["ab"], {"a": 1, "b": 2}]))
    def agree(instance: Any) -> None:
        if "draft-04" in name and re.search(r"\d\.0\b", json.dumps(instance)):
            return  # draft-04 "integer" excludes 2.0; grammars never write an integer with a fraction
        lowered_agrees(schema, instance, exact=True)

    agree()


def test_draft07_ref_siblings_do_not_constrain_but_2020_ones_do() -> None:
    old = DRAFTS["draft-07 keywords beside $ref are ignored"]
    new = {k: v for k, v in old.items() if k != "$schema"}
    assert is_valid({"a": 1}, lower_schema(old)) and not is_valid({"a": 1}, lower_schema(new))


# -- formats ----------------------------------------------------------------------------------------
VALID_EXAMPLES = {
    "date-time": ["2024-02-29T23:59:59Z", "1999-12-31T00:00:00.5+05:30"],
    "date": ["2000-02-29", "2023-11-30"],
    "time": ["08:30:00Z", "23:59:59.123-01:00"],
    "duration": ["P1Y2M3D", "PT4H5M", "P3W", "P1DT2S"],
    "email": ["ada@example.com"],
    "hostname": ["example.com", "a-b.c"],
    "ipv4": ["192.168.0.1", "0.0.0.0"],
    "ipv6": ["::1", "fe80::1:2", "1:2:3:4:5:6:7:8", "::"],
    "uri": ["https://example.com/a/b?x=1#f"],
    "uri-reference": ["../a/b", "https://example.com", "#frag"],
    "uuid": ["123e4567-e89b-12d3-a456-426614174000"],
}
INVALID_EXAMPLES = {
    "date": ["2023-02-29", "2023-13-01", "2023-04-31"],
    "date-time": ["2024-02-29 23:59:59Z", "2024-02-29T24:00:00Z"],
    "time": ["08:30:00", "25:00:00Z"],
    "duration": ["P", "PT", "P1Y1D", "P1W1D"],
    "ipv4": ["256.1.1.1", "01.2.3.4"],
    "ipv6": ["1:2:3:4:5:6:7:8:9", "1::2::3"],
    "uuid": ["123e4567e89b12d3a456426614174000"],
}


@pytest.mark.parametrize("name", sorted(VALID_EXAMPLES))
def test_format_patterns_generate_only_strings_the_format_checker_accepts(name: str) -> None:
    pattern = format_pattern(name)
    checker = strict_format_checker()
    for example in VALID_EXAMPLES[name]:
        assert re.fullmatch(pattern, example), f"{name}: the pattern misses the valid {example!r}"
    for example in INVALID_EXAMPLES.get(name, []):
        assert not re.fullmatch(pattern, example), f"{name}: the pattern admits the invalid {example!r}"
        assert not checker.conforms(example, name), f"{name}: the checker admits {example!r}"

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.from_regex(re.compile(pattern.replace("^", "\\A", 1).removesuffix("$") + "\\Z"), fullmatch=True))
    def conforms(text: str) -> None:
        assert checker.conforms(text, name), f"{name}: {text!r}"
        jsonschema.validate(text, {"format": name}, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

    conforms()


def test_every_listed_format_has_a_pattern() -> None:
    assert set(VALID_EXAMPLES) <= set(FORMAT_PATTERNS)


def test_format_lowering() -> None:
    assert lower_schema({"type": "string", "format": "uuid"}) == {"type": "string", "pattern": format_pattern("uuid")}
    assert lower_schema({"type": "integer", "format": "int32"}) == {"type": "integer"}  # no checker knows it
    assert lower_schema({"type": "string", "format": "regex"})["format"] == "regex"  # kept, so refused


# -- routing ----------------------------------------------------------------------------------------
def test_router_accepts_annotated_and_older_schemas_and_logs_the_route(
    tiny_tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    router = GrammarRouter("xgrammar", tiny_tokenizer, len(tiny_tokenizer), {tiny_tokenizer.eos_token_id})
    schemas = [
        {"$ref": "#/definitions/x", "description": "d", "definitions": {"x": {"type": "integer"}}},
        {"type": "object", "alias": "n", "properties": {"a": {"type": "string", "format": "date"}}},
        DRAFTS["draft-04 dependencies (both kinds)"],
        ONE_OF_BY_CONST,
    ]
    with caplog.at_level(logging.DEBUG, logger="radixlm.constrained.router"):
        for schema in schemas:
            router.resolve(GrammarSpec("json_schema", json.dumps(schema)))
    assert sum("-> xgrammar" in r.getMessage() or "-> llguidance" in r.getMessage() for r in caplog.records) == 4


@pytest.mark.parametrize(
    "schema, keyword",
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "minItems": 2}, "uniqueItems"),
        (
            {"type": "array", "unevaluatedItems": False, "contains": {"type": "integer"}, "maxContains": 1},
            "(unevaluatedItems|contains)",
        ),
        ({"not": {"pattern": "^a"}}, "not"),
        ({"oneOf": [{"type": "integer"}, {"multipleOf": 3}]}, "oneOf"),
        ({"type": "string", "format": "regex"}, "format"),
    ],
)
def test_what_stays_unenforceable_is_refused_by_name_and_pointer(
    tiny_tokenizer: Any, schema: Any, keyword: str
) -> None:
    router = GrammarRouter("xgrammar", tiny_tokenizer, len(tiny_tokenizer), {tiny_tokenizer.eos_token_id})
    with pytest.raises(ValueError, match=rf"{keyword} \(at #"):
        router.resolve(GrammarSpec("json_schema", json.dumps(schema)))


def test_patterns_xgrammar_misreads_go_to_another_backend(tiny_tokenizer: Any) -> None:
    """xgrammar 0.2 accepts "a12Z" for the JSON-schema pattern ^a(x[0-9]{1,3})?Z$ (found when a
    date-time's seconds came out as "146690"); such patterns, formats included, go to llguidance."""
    router = GrammarRouter("xgrammar", tiny_tokenizer, len(tiny_tokenizer), {tiny_tokenizer.eos_token_id})
    for schema in ({"type": "string", "pattern": "^a(x[0-9]{1,3})?Z$"}, {"type": "string", "format": "date-time"}):
        assert router.resolve(GrammarSpec("json_schema", json.dumps(schema))).name == "llguidance"
    assert router.resolve(GrammarSpec("json_schema", '{"type": "string", "pattern": "^[a-z]+$"}')).name == "xgrammar"


def test_formats_lowered_to_patterns_xgrammar_reads_exactly_go_to_xgrammar(
    tiny_tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit reads the lowered schema: a format whose pattern xgrammar enforces exactly is
    taken by xgrammar (the route logged at debug), and its grammar accepts the format's valid
    examples and rejects the invalid ones, as the pattern does."""
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    router = GrammarRouter("xgrammar", tiny_tokenizer, len(tiny_tokenizer), {tiny_tokenizer.eos_token_id})
    taken = []
    with caplog.at_level(logging.DEBUG, logger="radixlm.constrained.router"):
        for name in sorted(VALID_EXAMPLES):
            schema = {"type": "string", "format": name}
            if router.resolve(GrammarSpec("json_schema", json.dumps(schema))).name == "xgrammar":
                taken.append(name)
    assert {"date", "ipv4", "uuid"} <= set(taken)
    assert any("format" in r.getMessage() and "-> xgrammar" in r.getMessage() for r in caplog.records)
    for name in taken:
        grammar = xgrammar.Grammar.from_json_schema(json.dumps(lower_schema({"type": "string", "format": name})))
        for text in VALID_EXAMPLES[name]:
            assert _is_grammar_accept_string(grammar, json.dumps(text)), (name, text)
        for text in INVALID_EXAMPLES.get(name, []):
            assert not _is_grammar_accept_string(grammar, json.dumps(text)), (name, text)
