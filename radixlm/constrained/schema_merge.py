"""The conjunction of two schemas as one schema (`allOf` flattened), where that is exact.

`merge(a, b)` returns a schema valid for exactly the instances valid under both `a` and `b`, or
None when it cannot say so without changing meaning. Keywords that read each other
(`additionalProperties` reads its own schema's `properties`, `items` its `prefixItems`, ...) are
merged only where no such reading crosses from one side to the other.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
_OBJECT_GROUP = ("properties", "patternProperties", "additionalProperties", "unevaluatedProperties")
_ARRAY_GROUP = ("prefixItems", "items", "unevaluatedItems")
_WHOLE_GROUPS = (("contains", "minContains", "maxContains"), ("if", "then", "else"))
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains")
_TARGETS = ("$defs", "definitions")


def merge(a: Any, b: Any) -> Optional[Any]:
    """Exact conjunction of schemas `a` and `b`, or None."""
    if a is True or a == {}:
        return b
    if b is True or b == {}:
        return a
    if a is False or b is False:
        return False
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None
    a, b = _without_idle_properties(a), _without_idle_properties(b)
    if not _groups_compatible(a, b):
        return None
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
            continue
        combined = _combine(key, out[key], value)
        if combined is _FAIL:
            return None
        if combined is _EMPTY:
            return False  # no instance meets both values of this keyword
        out[key] = combined
    return _const_in_enum(out)


def _without_idle_properties(schema: dict) -> dict:
    """`properties` entries that are `true`/`{}` dropped where nothing else reads the listing
    (no `additionalProperties`, `patternProperties`, `unevaluatedProperties`, `required`): they
    constrain nothing."""
    props = schema.get("properties")
    if not isinstance(props, dict) or {*_OBJECT_GROUP, "required"} & schema.keys() - {"properties"}:
        return schema
    kept = {k: v for k, v in props.items() if not (v is True or v == {})}
    if len(kept) == len(props):
        return schema
    out = {k: v for k, v in schema.items() if k != "properties"}
    return {**out, "properties": kept} if kept else out


def _const_in_enum(out: dict) -> Any:
    """`const` beside `enum` as the `const` alone (or false when the enum lacks it)."""
    if "const" in out and isinstance(out.get("enum"), list):
        if canonical(out["const"]) not in {canonical(v) for v in out["enum"]}:
            return False
        out = {k: v for k, v in out.items() if k != "enum"}
    return out


_FAIL = object()
_EMPTY = object()


def forbids_only(schema: dict) -> bool:
    """True when `schema` is `{"properties": {name: false, ...}}`: it only forbids keys, which is
    exact to add beside any other object keywords (a forbidden key is never "additional")."""
    props = schema.get("properties")
    return schema.keys() == {"properties"} and isinstance(props, dict) and all(v is False for v in props.values())


def _groups_compatible(a: dict, b: dict) -> bool:
    if forbids_only(a) or forbids_only(b):
        return True
    for group in _WHOLE_GROUPS:
        if set(group) & a.keys() and set(group) & b.keys():
            return False
    in_a, in_b = set(_ARRAY_GROUP) & a.keys(), set(_ARRAY_GROUP) & b.keys()
    if in_a and in_b and not (in_a == in_b == {"items"}):
        return False
    return _objects_compatible(a, b)


def _objects_compatible(a: dict, b: dict) -> bool:
    """The object keywords of `a` and `b` may share one schema: one side lists only
    `properties`, each a name the other side already lists (so none becomes "additional"
    there), or both list only `properties`, or one side has none."""
    in_a, in_b = set(_OBJECT_GROUP) & a.keys(), set(_OBJECT_GROUP) & b.keys()
    if not in_a or not in_b or in_a == in_b == {"properties"}:
        return True
    if _open_everywhere(a, in_a) or _open_everywhere(b, in_b):
        return True  # `additionalProperties: true` alone constrains nothing, whatever is listed
    return _listed_within(b, a) or _listed_within(a, b)


def _open_everywhere(schema: dict, group: set) -> bool:
    return group == {"additionalProperties"} and schema["additionalProperties"] in (True, {})


def _listed_within(inner: dict, outer: dict) -> bool:
    props = inner.get("properties")
    if set(_OBJECT_GROUP) & inner.keys() != {"properties"} or not isinstance(props, dict):
        return False
    return set(props) <= set(outer.get("properties") or {})


def _combine(key: str, x: Any, y: Any) -> Any:
    if key == "type":
        return _intersect_types(x, y)
    if key in _LOWER:
        return max(x, y) if _numbers(x, y) else _FAIL
    if key in _UPPER:
        return min(x, y) if _numbers(x, y) else _FAIL
    if key == "required" and isinstance(x, list) and isinstance(y, list):
        return x + [name for name in y if name not in x]
    if key == "properties" or key in _TARGETS:
        return _merge_maps(x, y, merge if key == "properties" else _same)
    if key == "items":
        merged = merge(x, y)
        return _FAIL if merged is None else merged
    if key == "not":
        return {"anyOf": [x, y]}
    if key == "enum" and isinstance(x, list) and isinstance(y, list):
        right = {canonical(v) for v in y}
        both = [v for v in x if canonical(v) in right]
        return both if both else _EMPTY
    if key == "uniqueItems":
        return bool(x) or bool(y)
    if key == "dependentRequired" and isinstance(x, dict) and isinstance(y, dict):
        return {k: list(dict.fromkeys([*x.get(k, []), *y.get(k, [])])) for k in {**x, **y}}
    return x if canonical(x) == canonical(y) else _FAIL


def _merge_maps(x: Any, y: Any, combine: Callable[[Any, Any], Any]) -> Any:
    if not (isinstance(x, dict) and isinstance(y, dict)):
        return _FAIL
    out = dict(x)
    for name, sub in y.items():
        if name in out:
            merged = combine(out[name], sub)
            if merged is None:
                return _FAIL
            out[name] = merged
        else:
            out[name] = sub
    return out


def _same(x: Any, y: Any) -> Optional[Any]:
    return x if canonical(x) == canonical(y) else None


def _intersect_types(x: Any, y: Any) -> Any:
    left, right = type_set(x), type_set(y)
    if left is None or right is None:
        return _FAIL
    both = [t for t in TYPES if _admits(left, t) and _admits(right, t)]
    if "number" in both and "integer" in both:
        both.remove("integer")
    if not both:
        return _EMPTY
    return both[0] if len(both) == 1 else both


def _admits(types: set, name: str) -> bool:
    return name in types or (name == "integer" and "number" in types)


def type_set(value: Any) -> Optional[set]:
    """The `type` keyword's value as a set of names, or None when it is malformed."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(n in TYPES for n in names):
        return None
    return set(names)


def _numbers(x: Any, y: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))


def canonical(value: Any) -> str:
    """JSON text equal for values JSON Schema calls equal (1 and 1.0 alike; true is not 1)."""
    return json.dumps(_normalize(value), sort_keys=True)


def _normalize(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return value
