"""Disjointness proofs for the logic rewrites (`schema_logic`): `disjoint(a, b)` holds only when
no instance is valid under both schemas (by type, by const/enum values, by length or numeric
ranges, by array items, or by a required property whose values cannot meet); `literal_values`
reads a schema's finite value set."""

from __future__ import annotations

from typing import Any

from radixlm.constrained.schema_literals import fails
from radixlm.constrained.schema_merge import TYPES, canonical, type_set


def disjoint(a: Any, b: Any) -> bool:
    """Provably no instance valid under both `a` and `b`."""
    if a is False or b is False:
        return True
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    for one, other in ((a, b), (b, a)):
        if isinstance(one.get("anyOf"), list) and all(disjoint(branch, other) for branch in one["anyOf"]):
            return True  # an instance of `one` is an instance of one of its branches
    left, right = admitted_types(a), admitted_types(b)
    if not (left & right):
        return True
    values_a, values_b = literal_values(a), literal_values(b)
    if values_a is not None and values_b is not None and not (values_a & values_b):
        return True
    for one, other in ((a, b), (b, a)):
        values = literal_values(one, raw=True)
        if values is not None and all(fails(v, other) for v in values):
            return True
    both = left & right  # an instance valid under both has one of these types
    if both <= {"string"} and _apart(a, b, "minLength", "maxLength"):
        return True
    if both <= {"integer", "number"} and _apart(a, b, "minimum", "maximum"):
        return True
    if both == {"array"} and _arrays_disjoint(a, b):
        return True
    return both == {"object"} and _objects_disjoint(a, b)


def _apart(a: dict, b: dict, low: str, high: str) -> bool:
    """The [low, high] ranges of the two schemas do not meet."""

    def below(x: dict, y: dict) -> bool:
        top, bottom = x.get(high), y.get(low)
        return isinstance(top, (int, float)) and isinstance(bottom, (int, float)) and top < bottom

    return below(a, b) or below(b, a)


def _arrays_disjoint(a: dict, b: dict) -> bool:
    """Both need a first item, and no value fits both item schemas."""
    if a.get("minItems", 0) < 1 or b.get("minItems", 0) < 1 or "prefixItems" in a or "prefixItems" in b:
        return False
    return disjoint(a.get("items", True), b.get("items", True))


def admitted_types(schema: dict) -> set:
    """The JSON types (number split as integer / non-integer "number") the schema may admit."""
    found = set(TYPES) - {"integer"} | {"integer"}
    declared = type_set(schema["type"]) if "type" in schema else None
    if declared is not None:
        found = set(declared) | ({"integer"} if "number" in declared else set())
    values = literal_values(schema, raw=True)
    if values is not None:
        found &= {_type_of(v) for v in values} | {"number" for v in values if _type_of(v) == "integer"}
    if isinstance(schema.get("anyOf"), list):
        found &= set().union(*(admitted_types(b) if isinstance(b, dict) else set(TYPES) for b in schema["anyOf"]))
    return found


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "integer" if float(value).is_integer() else "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def literal_values(schema: Any, raw: bool = False) -> Any:
    """The finite set of values a schema allows (canonical JSON texts, or the values with
    raw=True) from const / enum / boolean / null type; None when not finite or unknown."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        values = [schema["const"]]
    elif isinstance(schema.get("enum"), list):
        values = schema["enum"]
    elif schema.get("type") == "boolean" and schema.keys() <= {"type"}:
        values = [True, False]
    elif schema.get("type") == "null":
        values = [None]
    else:
        return None
    return list(values) if raw else {canonical(v) for v in values}


def _objects_disjoint(a: dict, b: dict) -> bool:
    req_a, req_b = set(a.get("required") or []), set(b.get("required") or [])
    props_a, props_b = a.get("properties") or {}, b.get("properties") or {}
    for key in req_a & req_b:
        left, right = literal_values(props_a.get(key)), literal_values(props_b.get(key))
        if left is not None and right is not None and not (left & right):
            return True
    if any(_forbids(b, k) for k in req_a) or any(_forbids(a, k) for k in req_b):
        return True
    return any(member_disjoint(a, b, k) for k in req_a) or any(member_disjoint(b, a, k) for k in req_b)


def _forbids(schema: dict, key: str) -> bool:
    return _member(schema, key) is False


def _member(schema: dict, key: str) -> Any:
    """The schema a value under `key` must meet in an object valid under `schema`."""
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    return True if schema.get("patternProperties") else schema.get("additionalProperties", True)


def member_disjoint(has: dict, other: dict, key: str) -> bool:
    """`has` requires `key`, and no value meets both schemas' demands on it."""
    return disjoint(_member(has, key), _member(other, key))
