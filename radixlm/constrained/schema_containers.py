"""Rewrites of the array and object keywords grammars cannot count or compare.

- `uniqueItems` with at most one item allowed: dropped (always unique). On items from a finite
  set (const / enum / boolean): `anyOf` of the duplicate-free tuples — every order when there
  are few, else each subset in the set's order (a subset of the instances, still all valid).
- `contains` (with `minContains` m ≥ 1, no `prefixItems`): the first m items are the ones that
  match, and with `maxContains` no later item matches (where `not` of `contains` is known) — a
  subset of the instances, all valid.
- `propertyNames`: each listed property whose name fails it is forbidden; names outside the
  listed properties are then refused by `additionalProperties: false` (a subset when the schema
  allowed other names; exact when it did not, or when `propertyNames` is an `enum`, whose names
  are then listed).
- `patternProperties` whose every pattern matches every name: merged into each listed property
  and into `additionalProperties`, which applied to no name before (exact).
- `required` names missing from `properties`: listed with the `additionalProperties` schema
  (exact: that is the schema they had).
Each returns the rewritten node, or None when no rewrite applies (the keyword stays).
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import jsonschema

from radixlm.constrained.schema_disjoint import literal_values
from radixlm.constrained.schema_logic import negate
from radixlm.constrained.schema_merge import merge
from radixlm.constrained.schema_patterns import matches_every_string

MAX_ALTERNATIVES = 64


def unique_items(node: dict) -> Optional[Any]:
    if not node.get("uniqueItems"):
        return {k: v for k, v in node.items() if k != "uniqueItems"}
    low, high = node.get("minItems", 0), node.get("maxItems")
    rest = {k: v for k, v in node.items() if k != "uniqueItems"}
    if isinstance(high, int) and high <= 1:
        return rest
    items = node.get("items", True)
    values = literal_values(items, raw=True)
    if "prefixItems" in node:
        return None
    finite = values is not None and isinstance(items, dict) and items.keys() <= {"type", "enum", "const"}
    if not finite or len(values) > 12:
        return _at_most_one(rest, low)
    high = len(values) if not isinstance(high, int) else min(high, len(values))
    tuples = _tuples(values, low, high)
    if tuples is None:
        return _at_most_one(rest, low)
    base = {k: v for k, v in rest.items() if k not in ("items", "minItems", "maxItems")}
    return {
        **base,
        "anyOf": [{"prefixItems": [{"const": v} for v in t], "items": False, "minItems": len(t)} for t in tuples],
    }


def _at_most_one(rest: dict, low: Any) -> Optional[dict]:
    """uniqueItems kept by allowing at most one item (a subset of the instances), when the
    schema allows arrays that short."""
    if isinstance(low, int) and low > 1:
        return None
    return {**rest, "maxItems": 1}


def min_max_properties(node: dict) -> Optional[Any]:
    """`maxProperties` no smaller than a closed object's listed properties: dropped (exact).
    `minProperties: 1` over listed properties: "one of them is present" (exact for a closed
    object, a subset otherwise); 0: dropped."""
    props, rest = node.get("properties") or {}, dict(node)
    closed = node.get("additionalProperties", True) is False and "patternProperties" not in node
    high = rest.get("maxProperties")
    if isinstance(high, int) and closed and high >= len(props):
        del rest["maxProperties"]
    low = rest.get("minProperties")
    if low == 0:
        del rest["minProperties"]
    elif low == 1 and props and len(props) <= 16 and "anyOf" not in rest:
        del rest["minProperties"]
        rest["anyOf"] = [{"required": [name]} for name in props if props[name] is not False]
    return None if rest.keys() == node.keys() else rest


def _tuples(values: list, low: int, high: int) -> Optional[list[tuple]]:
    sizes = range(max(low, 0), high + 1)
    ordered = [t for n in sizes for t in itertools.islice(itertools.permutations(values, n), MAX_ALTERNATIVES + 1)]
    if len(ordered) <= MAX_ALTERNATIVES:
        return ordered
    subsets = [t for n in sizes for t in itertools.islice(itertools.combinations(values, n), MAX_ALTERNATIVES + 1)]
    return subsets if len(subsets) <= MAX_ALTERNATIVES else None


def contains(node: dict) -> Optional[Any]:
    need, most = node.get("minContains", 1), node.get("maxContains")
    if "prefixItems" in node or not isinstance(need, int) or need > 16:
        return None
    rest = {k: v for k, v in node.items() if k not in ("contains", "minContains", "maxContains")}
    if node["contains"] is False and need > 0:  # no item can match: no array is valid
        return negate(rest, {"type": "array"})
    if most is not None:  # (unevaluatedItems would read which items `contains` evaluated)
        return None if "unevaluatedItems" in node else _contains_at_most(node, rest, max(need, 0), most)
    if need <= 0:
        return rest
    return _first_items_contained(node, rest, need, node.get("items", True))


def _first_items_contained(node: dict, rest: dict, need: int, tail: Any) -> Optional[Any]:
    first = merge(node.get("items", True), node["contains"])
    if first is None or first is False:
        return None
    high = node.get("maxItems")
    if isinstance(high, int) and high < need:
        return False
    out = {**rest, "prefixItems": [first] * need, "minItems": max(node.get("minItems", 0), need)}
    return out if tail is True else {**out, "items": tail}


def _contains_at_most(node: dict, rest: dict, need: int, most: Any) -> Optional[Any]:
    """minContains..maxContains: the first `need` items match and no later one does (a subset)."""
    if not isinstance(most, int) or most < need:
        return None if not isinstance(most, int) else False
    outside = negate({}, node["contains"])
    tail = merge(node.get("items", True), outside) if outside is not None else None
    if tail is None:
        return None
    if need == 0:
        return {**rest, "items": tail}
    return _first_items_contained(node, rest, need, tail)


def property_names(node: dict) -> Optional[Any]:
    names = node["propertyNames"]
    rest = {k: v for k, v in node.items() if k != "propertyNames"}
    if names is True or names == {}:
        return rest
    if names is False:  # no name is allowed: only the empty object
        return {**rest, "properties": dict.fromkeys(node.get("properties") or {}, False), "additionalProperties": False}
    if not isinstance(names, dict) or "patternProperties" in node or "$ref" in str(names):
        return None
    props = dict(node.get("properties") or {})
    listed = literal_values(names, raw=True)
    extra = node.get("additionalProperties", True)
    if listed is not None:
        for name in listed:
            if isinstance(name, str) and name not in props:
                props[name] = extra
    check = jsonschema.Draft202012Validator(names)
    props = {name: (sub if check.is_valid(name) else False) for name, sub in props.items()}
    return {**rest, "properties": props, "additionalProperties": False}


_IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "dependentSchemas")


def unevaluated(node: dict) -> Optional[Any]:
    """`unevaluatedProperties` / `unevaluatedItems` in a node with no in-place applicator (so only
    its own keywords evaluate anything): the same as `additionalProperties` / `items` (exact);
    dropped where those are present (then nothing is left unevaluated)."""
    if any(key in node for key in _IN_PLACE):
        return None
    out = dict(node)
    if "unevaluatedProperties" in out:
        value = out.pop("unevaluatedProperties")
        out.setdefault("additionalProperties", value)
    if "unevaluatedItems" in out:
        if "contains" in out:
            return None
        value = out.pop("unevaluatedItems")
        out.setdefault("items", value)
    return out


def required_listed(node: dict) -> dict:
    required, props = node.get("required"), node.get("properties")
    if not isinstance(required, list) or props is None or {"patternProperties", "unevaluatedProperties"} & node.keys():
        return node
    props = dict(props or {})
    missing = [name for name in required if isinstance(name, str) and name not in props]
    if not missing:
        return node
    extra = node.get("additionalProperties", True)
    return {**node, "properties": {**props, **{name: extra for name in missing}}}


def universal_patterns(node: dict) -> Optional[Any]:
    patterns = node["patternProperties"]
    if not isinstance(patterns, dict) or not patterns or not all(matches_every_string(p) for p in patterns):
        return None
    every: Any = True
    for sub in patterns.values():
        every = merge(every, sub)
        if every is None:
            return None
    props = {}
    for name, sub in (node.get("properties") or {}).items():
        props[name] = merge(sub, every)
        if props[name] is None:
            return None
    rest = {k: v for k, v in node.items() if k not in ("patternProperties", "additionalProperties")}
    return {**rest, **({"properties": props} if "properties" in node else {}), "additionalProperties": every}
