"""The schema lowering pass (radixlm/constrained/schema_lower.py and its parts): every rewrite is
checked against the original schema with `jsonschema` on hand-picked and hypothesis-generated
instances — exact rewrites must agree on every instance, subset rewrites must never accept an
instance the original rejects. Annotations, drafts, formats and routing:
test_schema_lower_keywords.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.schema_checks import is_valid
from helpers.schema_lowering import ONE_OF_BY_CONST, VALUES, lowered_agrees
from hypothesis import HealthCheck, given, settings

from radixlm.constrained.schema_lower import lower_schema
from radixlm.constrained.schema_walk import walk

EXACT = {
    "oneOf by type": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "oneOf by const discriminator": ONE_OF_BY_CONST,
    "oneOf by required keys": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
    },
    "oneOf by length ranges": {"type": "string", "oneOf": [{"maxLength": 0}, {"minLength": 1}]},
    "if/then/else on a discriminator": {
        "type": "object",
        "properties": {"kind": {"enum": ["module", "theme"]}, "x": {"type": "integer"}},
        "required": ["kind"],
        "if": {"properties": {"kind": {"const": "module"}}, "required": ["kind"]},
        "then": {"required": ["x"]},
        "else": {"properties": {"x": {"maximum": 3}}},
    },
    "dependentRequired": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {}},
        "dependentRequired": {"a": ["b"], "c": ["a"]},
    },
    "dependentSchemas": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "dependentSchemas": {"a": {"properties": {"b": {"minimum": 5}}, "required": ["b"]}},
    },
    "not type": {"type": ["string", "integer", "null"], "not": {"type": "null"}},
    "not enum": {"enum": ["a", "b", 1, None], "not": {"enum": ["b", None]}},
    "not required": {"type": "object", "properties": {"a": {}, "b": {}}, "not": {"required": ["a", "b"]}},
    "uniqueItems over an enum": {"type": "array", "items": {"enum": ["a", "b", "x"]}, "uniqueItems": True},
    "uniqueItems over booleans": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 1},
    "propertyNames enum": {
        "type": "object",
        "propertyNames": {"enum": ["a", "b"]},
        "additionalProperties": {"type": "integer"},
    },
    "propertyNames on a closed object": {
        "type": "object",
        "properties": {"a": {}, "kind": {}, "description": {}},
        "propertyNames": {"maxLength": 4},
        "additionalProperties": False,
    },
    "allOf merge": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]},
    "$ref beside constraints": {
        "$defs": {"n": {"type": "integer"}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/n", "minimum": 2, "description": "a count"}},
    },
    "anyOf beside keywords": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
    },
    "type list with per-type keywords": {"type": ["string", "array"], "maxLength": 2, "items": {"type": "integer"}},
    "unevaluatedProperties without applicators": {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "unevaluatedProperties": {"type": "string"},
    },
    "unevaluatedItems without applicators": {
        "type": "array",
        "prefixItems": [{"type": "integer"}],
        "unevaluatedItems": False,
    },
    "not required on an untyped schema": {"not": {"required": ["a"]}},
    "not a typed member": {
        "properties": {"b": {}},
        "not": {"required": ["a"], "properties": {"a": {"type": "string"}}},
    },
    "not an enum of strings": {"type": ["string", "integer"], "not": {"enum": ["upstart", "up", "a", ""]}},
    "not a run of punctuation": {"type": "string", "minLength": 1, "not": {"pattern": "^[\\s.,-]+$"}},
    "not a run of punctuation, untyped": {"not": {"pattern": "^[\\s.,-]+$"}},
    "patternProperties matching every name": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": False},
        "patternProperties": {"^[a-z]*": {"minimum": 2}, ".*": {"type": ["integer", "string"]}},
        "additionalProperties": False,
    },
    "oneOf by a required member no value of the other meets": {
        "oneOf": [
            {"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}}},
            {"type": "object", "additionalProperties": {"enum": [False]}},
        ]
    },
    "oneOf of an anyOf whose every branch is disjoint from the other": {
        "oneOf": [
            {"anyOf": [{"required": ["kind"], "properties": {"kind": {"const": c}}} for c in ("a", "b")]},
            {"type": "object", "required": ["kind"], "properties": {"kind": {"const": "x"}}},
        ]
    },
    "oneOf beside a recursive $ref (its target's type tells them apart)": {
        "$defs": {
            "tree": {
                "type": "object",
                "properties": {
                    "kind": {"oneOf": [{"$ref": "#/$defs/tree"}, {"type": "array", "items": {"$ref": "#"}}]}
                },
            }
        },
        "$ref": "#/$defs/tree",
    },
    "oneOf of arrays whose item schemas are disjoint ([] meets both)": {
        "oneOf": [
            {"type": "boolean"},
            {"type": "array", "items": {"enum": ["a", "b"]}},
            {"type": "array", "items": {"type": "integer"}},
        ]
    },
    "oneOf of branches with object keywords only (every non-object meets both)": {
        "properties": {"a": {"type": "integer"}, "b": {}},
        "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
    },
    "oneOf by values no value of the other branch's pattern admits": {
        "oneOf": [{"enum": ["a", "up"]}, {"type": "string", "pattern": "^b", "minLength": 1}]
    },
    "oneOf of overlapping branches, each without the other (NOT of a bound)": {
        "oneOf": [{"type": "string"}, {"maxLength": 2}]
    },
    "if/then/else on any test whose complement is known": {
        "if": {"properties": {"kind": {"const": "a"}}},
        "then": {"required": ["x"]},
        "else": {"properties": {"x": {"maxLength": 2}}},
    },
    "if/then with a test of several independent keywords": {
        "if": {"type": "string", "minLength": 3},
        "then": {"pattern": "^a"},
        "else": {"not": {"type": "string", "minLength": 2}},
    },
    "then/else without if, and maxContains without contains, do nothing": {
        "then": {"type": "integer"},
        "else": False,
        "maxContains": 0,
    },
    "anyOf with a true branch and a false one": {"anyOf": [False, True], "type": ["array", "string"]},
    "count bounds written as decimals": {"type": "array", "minItems": 1.0, "maxItems": 2.0},
    "unevaluatedProperties beside allOf (every part's properties count)": {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "allOf": [{"properties": {"b": {"type": "string"}}}],
        "unevaluatedProperties": False,
    },
    "propertyNames false (only the empty object)": {"properties": {"a": {}}, "propertyNames": False},
    "contains false (no array)": {"contains": False},
    "dependentSchemas listing a property with no constraint beside a closed object": {
        "properties": {"kind": {}},
        "dependentSchemas": {"kind": {"properties": {"b": {}}}},
        "additionalProperties": False,
    },
    "unevaluatedProperties beside allOf with additionalProperties true (all evaluated)": {
        "properties": {"a": {"type": "string"}},
        "allOf": [{"additionalProperties": True}],
        "unevaluatedProperties": False,
    },
    "unevaluatedItems beside allOf of true (only the empty array)": {"allOf": [True], "unevaluatedItems": False},
    "not of numbers (every other type, or a number between them)": {"not": {"enum": [1, 1.5, -0.5]}},
    "maxProperties on a closed object": {
        "type": "object",
        "properties": {"a": {}, "b": {}},
        "additionalProperties": False,
        "maxProperties": 2,
    },
}
SUBSET = {
    "unevaluatedProperties beside anyOf (a branch counts only its own properties)": {
        "type": "object",
        "properties": {"a": {}},
        "anyOf": [{"properties": {"b": {}}}, {"required": ["a"]}],
        "unevaluatedProperties": False,
    },
    "uniqueItems on strings (at most one item)": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "contains (matching items first)": {
        "type": "array",
        "items": {"type": ["integer", "string"]},
        "contains": {"type": "integer"},
    },
    "propertyNames pattern": {
        "type": "object",
        "properties": {"a": {}, "kind": {}},
        "propertyNames": {"pattern": "^[a-z]$"},
    },
    "oneOf told apart by a member that may be absent": {
        "type": "object",
        "oneOf": [
            {"properties": {"kind": {"type": "string", "not": {"enum": ["upstart"]}}}},
            {"properties": {"kind": {"enum": ["upstart"]}}, "required": ["x"]},
        ],
    },
    "oneOf of an anyOf whose every branch requires a key": {
        "type": "object",
        "oneOf": [
            {
                "anyOf": [
                    {"required": ["a"], "properties": {"b": False}},
                    {"required": ["a"], "properties": {"c": False}},
                ]
            },
            {"required": ["b"]},
        ],
    },
    "contains with maxContains (the first items match, no later one does)": {
        "type": "array",
        "items": {"type": "integer"},
        "contains": {"maximum": 1},
        "minContains": 1,
        "maxContains": 2,
    },
    "contains a number at most once (first item, no later one)": {"contains": {"const": 1}, "maxContains": 1},
    "not integer (every number dropped)": {"not": {"type": ["integer", "boolean"]}},
    "oneOf of overlapping objects": {
        "oneOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ]
    },
}


REWRITTEN = {
    "oneOf",
    "not",
    "if",
    "dependentRequired",
    "dependentSchemas",
    "uniqueItems",
    "propertyNames",
    "allOf",
    "maxProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
}


def assert_rewritten(name: str, schema: Any) -> None:
    lowered = lower_schema(schema)
    left = {k for node in walk(lowered) for k in node} & REWRITTEN
    assert not left, f"{name}: {sorted(left)} still in {json.dumps(lowered)}"


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_rewrites_leave_no_refused_keyword_and_agree(name: str) -> None:
    schema = EXACT[name]
    assert_rewritten(name, schema)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(VALUES)
    def agree(instance: Any) -> None:
        lowered_agrees(schema, instance, exact=True)

    agree()


@pytest.mark.parametrize("name", sorted(SUBSET))
def test_subset_rewrites_never_accept_what_the_original_rejects(name: str) -> None:
    schema = SUBSET[name]
    assert_rewritten(name, schema)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(VALUES)
    def subset(instance: Any) -> None:
        lowered_agrees(schema, instance, exact=False)

    subset()
    assert any(is_valid(i, lower_schema(schema)) for i in ([], {}, ["a"], [1], {"a": 1}, {"a": 1, "kind": 2}))


def test_not_of_numbers_excludes_exactly_the_points() -> None:
    schema = {"not": {"enum": [1, 1.5, -0.5]}}
    lowered = lower_schema(schema)
    for instance in (-1, -0.5, 0, 1, 1.0, 1.2, 1.5, 2, 2.0, "1", None, True, [], {}):
        assert is_valid(instance, lowered) == is_valid(instance, schema), instance


def test_oneof_that_is_not_provably_disjoint_stays() -> None:
    schema = {"oneOf": [{"type": "integer"}, {"multipleOf": 3}]}  # 3 matches both: oneOf rejects it
    assert "oneOf" in lower_schema(schema)
