"""Exact rewrites of the logic keywords into `anyOf` alternatives and plain keywords.

Each function takes one schema node (children already lowered) and returns the alternatives to
AND with the node (a list of schemas, one of which must hold), or a rewritten node, or None
when no exact rewrite is known (the keyword then stays and the backend check refuses it).
- `oneOf` whose branches are pairwise disjoint → `anyOf` (disjoint by type, by const/enum
  values, by a required discriminator property with disjoint values, or by a key one branch
  requires and the other forbids);
- `dependentRequired` / `dependentSchemas` → "key absent" or "key present with its dependants";
- `not` of `{type}` (NOT integer drops every number: a subset), `{enum}`/`{const}` (against a
  finite parent, of strings only: a complement pattern, of numbers only beside nothing else:
  the other types and the open intervals between them), `{required: [k]}`,
  `{required: [k], properties: {k: <a simple form>}}`,
  `{pattern: "^[C]+$"}` (a complement pattern), `{}`/`true`;
- `if`/`then`/`else` whose `if` tests one property against constants of a finite parent set.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from radixlm.constrained.schema_bounds import BOUNDS, failing_bound
from radixlm.constrained.schema_disjoint import admitted_types, disjoint, literal_values, member_disjoint
from radixlm.constrained.schema_merge import TYPES, canonical, merge, type_set
from radixlm.constrained.schema_patterns import outside_class_run, outside_strings

Resolve = Callable[[Any], Any]  # a branch with its top-level $ref replaced by the target, if known


def absent(key: str) -> dict:
    return {"properties": {key: False}}


def dependencies(node: dict) -> Optional[list[list[Any]]]:
    """The conjuncts (each a list of alternatives) for dependentRequired / dependentSchemas."""
    out: list[list[Any]] = []
    for key, names in (node.get("dependentRequired") or {}).items():
        if not isinstance(names, list):
            return None
        out.append([absent(key), {"required": list(dict.fromkeys([key, *names]))}])
    for key, sub in (node.get("dependentSchemas") or {}).items():
        present = merge({"required": [key]}, sub)
        if present is None:
            return None
        out.append([absent(key)] if present is False else [absent(key), present])
    return out


def one_of(rest: dict, branches: list[Any], resolve: Resolve, hint: Optional[Resolve] = None) -> Optional[list[Any]]:
    """`anyOf` alternatives for `oneOf: branches` beside the keywords `rest`, or None.

    Each branch is taken within `rest`. A pair that is provably disjoint needs nothing; otherwise
    branch i keeps only instances that some separator proves fail branch j (`separators`):
    exact when the separators cover every instance of i outside j (the branches differ only by
    required keys, or only by disjoint array items), else a subset. `hint(branch)`, when given,
    is a schema implied by the branch (a recursive `$ref` with its target's `type`), used only
    in the disjointness proofs."""
    seen = [resolve(b) for b in branches]
    within = [merge(rest, b) if isinstance(b, dict) else b for b in seen]
    if any(w is None for w in within):
        return None
    facts = [_implied(w, hint(b)) if hint else w for w, b in zip(within, seen)]
    out = []
    for i, branch in enumerate(within):
        alternatives: list[Any] = [branch]
        for j, other in enumerate(within):
            if i == j or disjoint(facts[i], facts[j]):
                continue
            fact = facts[i]
            if only_object_keywords(seen[j]):  # every non-object meets branch j
                alternatives = [merge(a, {"type": "object"}) for a in alternatives]
                fact = _implied(fact, {"type": "object"})
            found = separators(branch, other, fact, facts[j]) or _failing(seen[j])
            if not found:
                return None
            alternatives = [conjoin(a, s) for a in alternatives if a is not False for s in found]
            if len(alternatives) > 16 or any(a is None for a in alternatives):
                return None
        out.extend(a for a in alternatives if a is not False)
    return out or [False]


def conjoin(a: Any, b: Any) -> Optional[Any]:
    """`merge(a, b)`, or, where both hold an `anyOf`, the rest merged with the two `anyOf`s kept
    as an `allOf` of them (which the lowering pass distributes); None when neither is exact."""
    both = merge(a, b)
    if both is not None or not (isinstance(a, dict) and isinstance(b, dict)):
        return both
    if not (isinstance(a.get("anyOf"), list) and isinstance(b.get("anyOf"), list)):
        return None
    rest = merge({k: v for k, v in a.items() if k != "anyOf"}, {k: v for k, v in b.items() if k != "anyOf"})
    if not isinstance(rest, dict) or "allOf" in rest:
        return None if rest is None or isinstance(rest, dict) else rest
    return {**rest, "allOf": [{"anyOf": a["anyOf"]}, {"anyOf": b["anyOf"]}]}


def _failing(branch: Any) -> list[Any]:
    """[NOT branch] when `negate` knows it, else []."""
    found = negate({}, branch) if isinstance(branch, dict) else None
    return [] if found is None else [found]


_OBJECT_KEYWORDS = frozenset(
    ("properties", "required", "additionalProperties", "patternProperties", "minProperties", "maxProperties")
    + ("dependentRequired", "dependentSchemas", "propertyNames")
)


def only_object_keywords(schema: Any) -> bool:
    """Every keyword of `schema` constrains objects only (so every non-object is valid)."""
    return isinstance(schema, dict) and bool(schema) and schema.keys() <= _OBJECT_KEYWORDS


def separators(branch: Any, other: Any, fact: Any, other_fact: Any) -> list[Any]:
    """Schemas each of which, ANDed with `branch`, makes `other` fail; [] when none is known.

    Objects: a key `other` requires and `branch` does not, absent; or a key whose values under
    the two schemas cannot meet, present. Arrays whose item schemas are disjoint: a first item."""
    if not (isinstance(branch, dict) and isinstance(other, dict)):
        return []
    types = admitted_types(fact)
    if types <= {"array"} and admitted_types(other_fact) <= {"array"} and _items_apart(fact, other_fact):
        return [{"minItems": 1}]
    if not (types <= {"object"} or admitted_types(other_fact) <= {"object"}):
        return []  # a non-object could match both: keys do not tell them apart
    found: list[Any] = [absent(k) for k in sorted(_required(other) - _required(branch))]
    found += [
        {"required": [k]} for k in sorted(_keys(branch) - _required(branch)) if member_disjoint(fact, other_fact, k)
    ]
    return found


def _items_apart(a: dict, b: dict) -> bool:
    return "prefixItems" not in a and "prefixItems" not in b and disjoint(a.get("items", True), b.get("items", True))


def _keys(schema: dict) -> set:
    return set(schema.get("properties") or {})


def _implied(branch: Any, fact: Any) -> Any:
    both = merge(branch, fact) if isinstance(branch, dict) and isinstance(fact, dict) else None
    return branch if both is None else both


def _required(schema: Any) -> set:
    """The keys every object valid under `schema` has (its `required`, and those each `anyOf`
    branch requires)."""
    if not isinstance(schema, dict):
        return set()
    keys = set(schema.get("required") or [])
    branches = schema.get("anyOf")
    if isinstance(branches, list) and branches:
        keys |= set.intersection(*(_required(b) for b in branches))
    return keys


def negate(node: dict, inner: Any) -> Optional[Any]:
    """`node` AND NOT `inner` as one schema, for the simple forms of `inner`; None otherwise."""
    if inner is True or inner == {}:
        return False
    if inner is False:
        return node
    if not isinstance(inner, dict):
        return None
    if inner.keys() == {"type"}:
        return _without_types(node, inner["type"])
    if inner.keys() == {"required"} and isinstance(inner["required"], list) and inner["required"]:
        keys, node = inner["required"], merge(node, {"type": "object"})  # non-objects meet `required`
        if not isinstance(node, dict) or len(keys) == 1:
            return node if not isinstance(node, dict) else merge(node, absent(keys[0]))
        return _and_alternatives(node, [absent(k) for k in keys])
    if inner.keys() == {"required", "properties"}:
        return _without_member(node, inner)
    if inner.keys() in ({"enum"}, {"const"}):
        kept = _without_values(node, literal_values(inner))
        kept = kept if kept is not None else _without_strings(node, literal_values(inner, raw=True))
        return kept if kept is not None else _without_numbers(node, literal_values(inner, raw=True))
    if inner.keys() == {"pattern"} and isinstance(inner["pattern"], str):
        return _without_pattern(node, inner["pattern"])
    if len(inner) == 1 and inner.keys() <= BOUNDS:
        ((key, value),) = inner.items()
        failing = failing_bound(key, value)
        return None if failing is None else merge(node, failing)
    if inner.keys() == {"properties"} and isinstance(inner["properties"], dict) and len(inner["properties"]) == 1:
        ((key, sub),) = inner["properties"].items()
        failing = negate({}, sub)  # NOT: an object holding `key` with a value failing `sub`
        return (
            None
            if failing is None
            else merge(node, {"type": "object", "required": [key], "properties": {key: failing}})
        )
    if inner.keys() == {"properties"} and isinstance(inner["properties"], dict) and inner["properties"]:
        return _without_any(node, [{"properties": {k: s}} for k, s in inner["properties"].items()])
    if len(inner) > 1 and inner.keys() <= _INDEPENDENT:
        return _without_any(node, [{k: v} for k, v in inner.items()])
    return None


# Keywords each of which judges an instance alone (no sibling changes what it means).
_INDEPENDENT = BOUNDS | {"type", "enum", "const", "pattern", "required", "properties"}


def _without_any(node: dict, parts: list[Any]) -> Optional[Any]:
    """`node` AND NOT (all of `parts`): an instance failing at least one part (De Morgan)."""
    alternatives = [negate(node, part) for part in parts]
    if any(a is None for a in alternatives):
        return None
    kept = [a for a in alternatives if a is not False]
    return False if not kept else kept[0] if len(kept) == 1 else {"anyOf": kept}


def _and_alternatives(node: dict, alternatives: list[Any]) -> dict:
    if "anyOf" in node:
        return {**node, "allOf": [*node.get("allOf", []), {"anyOf": alternatives}]}
    return {**node, "anyOf": alternatives}


def _without_member(node: dict, inner: dict) -> Optional[Any]:
    """NOT `{required: [k], properties: {k: S}}`: an object without k, or whose k fails S (S one
    of the simple forms `negate` knows); non-objects always meet the inner schema."""
    props = inner["properties"]
    if not (isinstance(props, dict) and len(props) == 1 and inner["required"] == list(props)):
        return None
    ((key, sub),) = props.items()
    failing, node = negate({}, sub), merge(node, {"type": "object"})
    if failing is None or not isinstance(node, dict):
        return None if failing is None else node
    if failing is False:
        return merge(node, absent(key))
    return _and_alternatives(node, [absent(key), {"required": [key], "properties": {key: failing}}])


def _without_pattern(node: dict, pattern: str) -> Optional[Any]:
    """NOT `{pattern: "^[C]+$"}`: a string holding a character outside C, or (for `+`) the
    empty string; non-strings always meet a `pattern`."""
    found = outside_class_run(pattern)
    node = merge(node, {"type": "string"}) if found is not None else None
    if not isinstance(node, dict):
        return node
    some, empty_too = found
    if not empty_too or node.get("minLength", 0) >= 1:
        return merge(node, {"pattern": some})
    return _and_alternatives(node, [{"maxLength": 0}, {"pattern": some}])


def _without_strings(node: dict, values: Optional[list]) -> Optional[Any]:
    """NOT an enum of strings: a pattern matching every other string (`pattern` never touches
    non-strings, which the enum also never admits)."""
    if not values or not all(isinstance(v, str) for v in values):
        return None
    outside = outside_strings(values)
    return None if outside is None else merge(node, {"pattern": outside})


def _without_numbers(node: dict, values: Optional[list]) -> Optional[Any]:
    """NOT an enum of numbers, for a node that constrains nothing: every other type, or a number
    in one of the open intervals between the values (exact: `x != v` is `x < v or x > v`)."""
    if node or not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    points = sorted(set(values))
    others = [t for t in TYPES if t not in ("number", "integer")]
    gaps: list[Any] = [{"type": "number", "exclusiveMaximum": points[0]}]
    gaps += [{"type": "number", "exclusiveMinimum": a, "exclusiveMaximum": b} for a, b in zip(points, points[1:])]
    gaps.append({"type": "number", "exclusiveMinimum": points[-1]})
    return {"anyOf": [{"type": others}, *gaps]}


def _without_types(node: dict, types: Any) -> Optional[Any]:
    removed = type_set(types)
    current = type_set(node.get("type", list(TYPES)))
    if removed is None or current is None:
        return None
    if "integer" in removed and "number" not in removed and "number" in current:
        removed = removed | {"number"}  # "a number that is not an integer" has no keyword: a subset
    left = [t for t in TYPES if t in current and t not in removed and not (t == "integer" and "number" in removed)]
    if not left:
        return False
    return {**node, "type": left[0] if len(left) == 1 else left}


def _without_values(node: dict, removed: Optional[set]) -> Optional[Any]:
    values = literal_values(node, raw=True)
    if removed is None or values is None:
        return None
    kept = [v for v in values if canonical(v) not in removed]
    if not kept:
        return False
    out = {k: v for k, v in node.items() if k not in ("const", "enum")}
    if out.get("type") in ("boolean", "null"):
        out.pop("type")
    return {**out, "enum": kept}


def conditional(node: dict) -> Optional[list[Any]]:
    """The alternatives for `if`/`then`/`else` (absent branches are `true`), when `if` is
    `{properties: {p: {const|enum}}, required?: [p]}` and the node's `properties[p]` is a finite set."""
    test, then, other = node.get("if", True), node.get("then", True), node.get("else", True)
    if "then" not in node and "else" not in node:
        return [True]
    if not isinstance(test, dict) or not test.keys() <= {"properties", "required"}:
        return None
    props = test.get("properties") or {}
    required = test.get("required") or []
    if len(props) != 1 or not set(required) <= set(props):
        return None
    ((key, sub),) = props.items()
    chosen = literal_values(sub, raw=True)
    universe = literal_values((node.get("properties") or {}).get(key), raw=True)
    if chosen is None or universe is None:
        return None
    picked = {canonical(v) for v in chosen}
    rest = [v for v in universe if canonical(v) not in picked]
    branches = [merge(test, then)]
    if rest:
        branches.append(merge({"required": [key], "properties": {key: {"enum": rest}}}, other))
    if required:
        branches.append(merge(absent(key), other))
    if any(b is None for b in branches):
        return None
    return [b for b in branches if b is not False] or [False]


def conditional_by_negation(node: dict) -> Optional[list[Any]]:
    """The alternatives for `if`/`then`/`else` as `if AND then` or `(NOT if) AND else`, exact
    wherever `negate` knows the complement of `if`; None otherwise."""
    test, then, other = node.get("if", True), node.get("then", True), node.get("else", True)
    failing = negate({}, test)
    if failing is None:
        return None
    branches = [conjoin(test, then), conjoin(failing, other)]
    if any(b is None for b in branches):
        return None
    return [b for b in branches if b is not False] or [False]
