"""`$ref`s relative to an embedded `$id`, `$anchor`s, full-URI references and static `$dynamicRef`s
(radixlm/constrained/schema_ids.py), checked against the original schema with `jsonschema`:
the rewritten schema must agree with the original on every instance (the JSON-Schema-Test-Suite's
own instances for each case, then hypothesis-generated ones), and the lowered schema must accept
nothing the original rejects. Schemas adapted from the JSON-Schema-Test-Suite (draft 2020-12)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.schema_checks import is_valid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixlm.constrained.schema_ids import resolve_ids
from radixlm.constrained.schema_lower import lower_schema
from radixlm.constrained.schema_walk import non_pointer_ref

S = "https://json-schema.org/draft/2020-12/schema"
KEYS = ["foo", "bar", "baz", "value", "subtree", "meta", "nodes", "content"]
SCALARS = st.none() | st.booleans() | st.integers(-3, 60) | st.sampled_from([1.5, "pass", "x", ""])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=10,
)

TREE = {
    "$schema": S,
    "$id": "http://localhost:1234/draft2020-12/tree",
    "type": "object",
    "properties": {"meta": {"type": "string"}, "nodes": {"type": "array", "items": {"$ref": "node"}}},
    "required": ["meta", "nodes"],
    "$defs": {
        "node": {
            "$id": "http://localhost:1234/draft2020-12/node",
            "type": "object",
            "properties": {"value": {"type": "number"}, "subtree": {"$ref": "tree"}},
            "required": ["value"],
        }
    },
}

# name: (schema, [(instance, valid under the original)])
CASES: dict[str, tuple[dict, list[tuple[Any, bool]]]] = {
    "$ref relative to the root's $id": (
        {
            "$schema": S,
            "$id": "https://example.com/draft2020-12/ref-and-id1/base.json",
            "$ref": "int.json",
            "$defs": {
                "bigint": {"$id": "int.json", "maximum": 10},
                "smallint": {"$id": "/draft2020-12/ref-and-id1-int.json", "maximum": 2},
            },
        },
        [(5, True), (50, False)],
    ),
    "absolute-path reference": (
        {
            "$schema": S,
            "$id": "http://example.com/ref/absref.json",
            "$defs": {
                "a": {"$id": "http://example.com/ref/absref/foobar.json", "type": "number"},
                "b": {"$id": "http://example.com/absref/foobar.json", "type": "string"},
            },
            "$ref": "/absref/foobar.json",
        },
        [("foo", True), (12, False)],
    ),
    "$anchor under a base URI change": (
        {
            "$schema": S,
            "$id": "http://localhost:1234/draft2020-12/root",
            "$ref": "http://localhost:1234/draft2020-12/nested.json#foo",
            "$defs": {"A": {"$id": "nested.json", "$defs": {"B": {"$anchor": "foo", "type": "integer"}}}},
        },
        [(1, True), ("a", False)],
    ),
    "the same $anchor under two bases": (
        {
            "$schema": S,
            "$id": "http://localhost:1234/draft2020-12/foobar",
            "$defs": {
                "A": {
                    "$id": "child1",
                    "allOf": [
                        {"$id": "child2", "$anchor": "my_anchor", "type": "number"},
                        {"$anchor": "my_anchor", "type": "string"},
                    ],
                }
            },
            "$ref": "child1#my_anchor",
        },
        [("a", True), (1, False)],
    ),
    "URN $id with a pointer inside it": (
        {
            "$schema": S,
            "$ref": "urn:uuid:deadbeef-4321-ffff-ffff-1234feebdaed",
            "$defs": {
                "foo": {
                    "$id": "urn:uuid:deadbeef-4321-ffff-ffff-1234feebdaed",
                    "$defs": {"bar": {"type": "string"}},
                    "$ref": "#/$defs/bar",
                }
            },
        },
        [("bar", True), (12, False)],
    ),
    "$defs by the full URI of the root": (
        {
            "$schema": S,
            "$id": "http://example.com/root.json",
            "type": "object",
            "properties": {"foo": {"$ref": "http://example.com/root.json#/$defs/n"}},
            "$defs": {"n": {"type": "integer"}},
        },
        [({"foo": 1}, True), ({"foo": "x"}, False)],
    ),
    "recursive references between resources": (
        TREE,
        [
            ({"meta": "root", "nodes": [{"value": 1, "subtree": {"meta": "c", "nodes": [{"value": 1.1}]}}]}, True),
            ({"meta": "root", "nodes": [{"value": 1, "subtree": {"meta": "c", "nodes": [{"value": "s"}]}}]}, False),
        ],
    ),
    "$dynamicRef to a $dynamicAnchor of the same resource": (
        {
            "$schema": S,
            "$id": "https://test.json-schema.org/dynamicRef-dynamicAnchor-same-schema/root",
            "type": "array",
            "items": {"$dynamicRef": "#items"},
            "$defs": {"foo": {"$dynamicAnchor": "items", "type": "string"}},
        },
        [(["foo", "bar"], True), (["foo", 42], False)],
    ),
    "$dynamicRef resolved to the root's $dynamicAnchor (outermost scope)": (
        {
            "$schema": S,
            "$id": "https://test.json-schema.org/typical-dynamic-resolution/root",
            "$ref": "list",
            "$defs": {
                "foo": {"$dynamicAnchor": "items", "type": "string"},
                "list": {
                    "$id": "list",
                    "type": "array",
                    "items": {"$dynamicRef": "#items"},
                    "$defs": {"items": {"$dynamicAnchor": "items"}},
                },
            },
        },
        [(["foo", "bar"], True), (["foo", 42], False)],
    ),
    "$dynamicRef whose initial target has only an $anchor": (
        {
            "$schema": S,
            "$id": "https://test.json-schema.org/dynamic-resolution-without-bookend/root",
            "$ref": "list",
            "$defs": {
                "foo": {"$dynamicAnchor": "items", "type": "string"},
                "list": {
                    "$id": "list",
                    "type": "array",
                    "items": {"$dynamicRef": "#items"},
                    "$defs": {"items": {"$anchor": "items", "type": "integer"}},
                },
            },
        },
        [([1, 2], True), (["foo"], False)],
    ),
    "$dynamicRef to boolean schemas": (
        {
            "$schema": S,
            "$defs": {"true": True, "false": False},
            "properties": {"foo": {"$dynamicRef": "#/$defs/true"}, "bar": {"$dynamicRef": "#/$defs/false"}},
        },
        [({"foo": 1}, True), ({"bar": 1}, False)],
    ),
}

# References whose target is another document or depends on the dynamic scope: left as they are.
UNRESOLVED = {
    "another document": {"$schema": S, "$ref": "http://localhost:1234/draft2020-12/integer.json"},
    "a relative ref leaving the document": {
        "$schema": S,
        "$id": "http://localhost:1234/draft2020-12/scope_change_defs1.json",
        "properties": {"list": {"$ref": "baseUriChangeFolder/"}},
        "$defs": {"baz": {"$id": "baseUriChangeFolder/", "type": "array", "items": {"$ref": "folderInteger.json"}}},
    },
    "$dynamicRef depending on the dynamic scope": {
        "$schema": S,
        "$id": "https://test.json-schema.org/dynamic-ref-skips-intermediate-resource/main",
        "properties": {"bar-item": {"$ref": "item"}},
        "$defs": {
            "bar": {
                "$id": "bar",
                "items": {"$ref": "item"},
                "$defs": {
                    "item": {
                        "$id": "item",
                        "properties": {"content": {"$dynamicRef": "#content"}},
                        "$defs": {"defaultContent": {"$dynamicAnchor": "content", "type": "integer"}},
                    },
                    "content": {"$dynamicAnchor": "content", "type": "string"},
                },
            }
        },
    },
}


def _as_2020(lowered: Any) -> Any:
    """The lowered schema validated as 2020-12 (what it is written in)."""
    return {"$schema": S, **lowered} if isinstance(lowered, dict) else lowered


@pytest.mark.parametrize("name", CASES)
def test_rewritten_refs_are_pointers_and_keep_the_suite_answers(name: str) -> None:
    schema, instances = CASES[name]
    rewritten = resolve_ids(schema)
    assert non_pointer_ref(rewritten) is None and "$dynamicRef" not in json.dumps(rewritten)
    lowered = lower_schema(schema)
    for instance, valid in instances:
        assert is_valid(instance, schema) == valid  # the case is stated right
        assert is_valid(instance, rewritten) == valid, (instance, rewritten)
        assert not is_valid(instance, _as_2020(lowered)) or valid, (instance, lowered)


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=60, suppress_health_check=list(HealthCheck), deadline=None, database=None)
@given(instance=VALUES)
def test_rewritten_refs_agree_on_generated_instances(name: str, instance: Any) -> None:
    schema = CASES[name][0]
    assert is_valid(instance, resolve_ids(schema)) == is_valid(instance, schema)
    lowered = lower_schema(schema)
    assert not is_valid(instance, _as_2020(lowered)) or is_valid(instance, schema)


def test_recursive_references_stay_references() -> None:
    lowered = lower_schema(TREE)
    assert '"$ref"' in json.dumps(lowered) and non_pointer_ref(lowered) is None


@pytest.mark.parametrize("name", UNRESOLVED)
def test_unresolvable_references_leave_the_schema_unchanged(name: str) -> None:
    assert resolve_ids(UNRESOLVED[name]) is UNRESOLVED[name]


def test_a_lone_reference_to_a_boolean_schema_is_that_boolean() -> None:
    rewritten = resolve_ids(CASES["$dynamicRef to boolean schemas"][0])
    assert rewritten["properties"] == {"foo": True, "bar": False}


@pytest.mark.parametrize(
    "schema",
    [
        {"$schema": {"a": 1}, "$ref": "x"},
        {"$id": 5, "$ref": "x"},
        {"$ref": "#/$defs/a", "$defs": {"a": {"$id": "http://[bad", "type": "string"}}},
        {"$ref": 5, "$dynamicRef": "#a"},
    ],
)
def test_malformed_documents_are_left_unchanged(schema: dict) -> None:
    assert resolve_ids(schema) is schema
