"""The schema lowering pass: a JSON schema rewritten, before any grammar backend sees it, into
keywords the backends enforce.

First, once per document, every `$ref` is written as a pointer from the root (`schema_ids`:
embedded `$id`s, anchors, static `$dynamicRef`s). Then, per node (children first): older-draft
spellings read as 2020-12 (`schema_drafts`); annotations and unknown keywords dropped (they
never constrain an instance, also beside `$ref`); formats as patterns (`schema_formats`); a
`$ref` beside other keywords inlined when its target is not recursive; `allOf` merged
(`schema_merge`); `oneOf`, `not`, `if`/`then`/`else`, `dependentRequired`/`dependentSchemas` as
`anyOf` alternatives (`schema_logic`); array and object counting keywords (`schema_containers`);
then an `anyOf` beside other keywords is distributed into its branches. A keyword no step can
rewrite exactly is left in place, so the backend check refuses it by name and JSON pointer.

Invariant: every instance valid under the lowered schema is valid under the original (under the
original's draft); the lowered schema accepts the same instances except where a step says it
keeps a subset (`schema_containers`, `schema_formats`).
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Optional

from radixlm.constrained import schema_containers as containers
from radixlm.constrained import schema_logic as logic
from radixlm.constrained.schema_drafts import draft_of, modernize
from radixlm.constrained.schema_formats import lower_format
from radixlm.constrained.schema_ids import resolve_ids
from radixlm.constrained.schema_merge import canonical, merge, type_set
from radixlm.constrained.schema_walk import KNOWN, hoist_refs, map_children, resolve_pointer

MAX_BRANCHES = 64
_TARGETS = ("$defs", "definitions")
_UNEVALUATED = ("unevaluatedProperties", "unevaluatedItems")


BY_TYPE = {
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"),
    "array": (
        "items",
        "prefixItems",
        "contains",
        "minContains",
        "maxContains",
        "minItems",
        "maxItems",
        "uniqueItems",
        "unevaluatedItems",
    ),
    "object": (
        "properties",
        "patternProperties",
        "additionalProperties",
        "required",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
    ),
}


def drop_other_types(node: dict) -> dict:
    """`node` without the keywords that apply only to types its `type` excludes (they never
    constrain any instance it admits)."""
    types = type_set(node.get("type")) if "type" in node else None
    if types is None:
        return node
    if "integer" in types:
        types = types | {"number"}
    dead = {key for kind, keys in BY_TYPE.items() if kind not in types for key in keys}
    return {k: v for k, v in node.items() if k not in dead} if dead & node.keys() else node


def _with_held(node: Any, held: dict) -> Optional[Any]:
    """`node` with the `unevaluated*` keywords `held` back in place; None when the node has its
    own, different ones (both would have to hold)."""
    if node is True and held:
        node = {}
    if not isinstance(node, dict) or not held:
        return node
    if any(k in node and canonical(node[k]) != canonical(v) for k, v in held.items()):
        return None
    return {**node, **held}


def lower_schema(schema: Any) -> Any:
    """The lowered copy of `schema` (the caller's object is not changed)."""
    return Lowering(schema).run()


class Lowering:
    """One pass over one document; holds the original root (to resolve `$ref`) and its draft."""

    def __init__(self, root: Any) -> None:
        self.root, self.draft = hoist_refs(resolve_ids(root)), draft_of(root)
        self._targets: dict[str, Any] = {}
        self._active: set[str] = set()

    def run(self) -> Any:
        return self.lower(self.root, "#")

    def lower(self, node: Any, path: str) -> Any:
        if not isinstance(node, dict):
            return node
        node = lower_format(drop_other_types(self._strip(modernize(node, self.draft), path)))
        node = map_children(node, self.lower, path)
        return self.rewrite(node)

    def _strip(self, node: dict, path: str) -> dict:
        out = {k: v for k, v in node.items() if k in KNOWN and k not in ("$anchor", "$dynamicAnchor")}
        if "$id" in out and (path == "#" or '"$ref"' not in json.dumps(out)):
            del out["$id"]
        return out

    def target(self, ref: str) -> Optional[Any]:
        """The lowered schema a local `$ref` names; None when remote, missing or recursive."""
        if ref in self._active or not ref.startswith("#"):
            return None
        if ref not in self._targets:
            try:
                raw = resolve_pointer(self.root, ref)
            except KeyError:
                return None
            self._active.add(ref)
            try:
                self._targets[ref] = self.lower(raw, ref)
            finally:
                self._active.discard(ref)
        return self._targets[ref]

    def resolved(self, branch: Any) -> Any:
        """`branch` with a lone top-level `$ref` replaced by its target (when known)."""
        if isinstance(branch, dict) and isinstance(branch.get("$ref"), str) and len(branch) == 1:
            found = self.target(branch["$ref"])
            return branch if found is None else found
        return branch

    def declared_type(self, branch: Any) -> Any:
        """For a lone `$ref` no step could inline (a recursive target), `{"type": ...}` as its
        target (through further lone `$ref`s) declares it; `{}` when unknown."""
        seen: set[str] = set()
        while isinstance(branch, dict) and branch.keys() == {"$ref"} and isinstance(branch["$ref"], str):
            ref = branch["$ref"]
            if ref in seen:
                return {}
            seen.add(ref)
            try:
                branch = modernize(resolve_pointer(self.root, ref), self.draft)
            except (KeyError, AttributeError):
                return {}
            branch = {k: v for k, v in branch.items() if k in ("$ref", "type")}
        return {"type": branch["type"]} if isinstance(branch, dict) and "type" in branch else {}

    def rewrite(self, node: dict) -> Any:
        node = self._inline_ref(node)
        node = self._merge_all_of(node)
        if isinstance(node, dict) and isinstance(node.get("anyOf"), list) and not set(_UNEVALUATED) & node.keys():
            node = self._trivial_branches(node)  # not beside unevaluated*: the branches evaluate
        for step in (self._split_types, self._not, self._conditional, self._one_of):
            if not isinstance(node, dict):
                return node
            node = step(node)
        if not isinstance(node, dict):
            return node
        node = self._containers(node)
        return self._distribute(node) if isinstance(node, dict) else node

    def _trivial_branches(self, node: dict) -> Any:
        """`anyOf` without its `false` branches; dropped when a branch is `true`; `false` when
        no branch is left."""
        branches = [b for b in node["anyOf"] if b is not False]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if any(b is True or b == {} for b in branches):
            return rest
        if not branches:
            return False
        return {**rest, "anyOf": branches}

    def _inline_ref(self, node: dict) -> dict:
        ref = node.get("$ref")
        others = node.keys() - {"$ref", *_TARGETS}
        if not isinstance(ref, str) or not others:
            return node
        found = self.target(ref)
        if found is None:
            return self._implied_siblings_dropped(node, ref)
        return {**{k: v for k, v in node.items() if k != "$ref"}, "allOf": [found, *node.get("allOf", [])]}

    def _implied_siblings_dropped(self, node: dict, ref: str) -> dict:
        """A `$ref` whose target (recursive, so not inlined) already has each sibling keyword
        with the same value: the siblings add nothing and are dropped."""
        try:
            raw = resolve_pointer(self.root, ref)
        except KeyError:
            return node
        siblings = {k: v for k, v in node.items() if k not in ("$ref", *_TARGETS)}
        if isinstance(raw, dict) and all(k in raw and canonical(raw[k]) == canonical(v) for k, v in siblings.items()):
            return {k: v for k, v in node.items() if k not in siblings}
        return node

    def _merge_all_of(self, node: dict) -> Any:
        parts = node.get("allOf")
        if not isinstance(parts, list):
            return node
        out: Any = {k: v for k, v in node.items() if k != "allOf"}
        tests = [p for p in parts if isinstance(p, dict) and p and p.keys() <= {"if", "then", "else"}]
        if len(tests) > 1 or tests and {"if", "then", "else"} & out.keys():
            return self._conditionals(node, out, [p for p in parts if p not in tests], tests)
        held = {k: out.pop(k) for k in _UNEVALUATED if k in out}  # sees every part's evaluations
        for part in parts:
            merged = merge(out, self.resolved(part))
            if merged is None:
                return node
            out = merged
        out = _with_held(out, held)
        if out is None:
            return node
        return self.rewrite(out) if isinstance(out, dict) and "allOf" in out else out

    def _conditionals(self, node: dict, out: dict, parts: list, tests: list) -> Any:
        """allOf holding several if/then/else: the rest merged, then each conditional as one
        conjunct of alternatives (exact only where `conditional` applies to each)."""
        for part in parts:
            out = merge(out, self.resolved(part))
            if not isinstance(out, dict):
                return node if out is None else out
        if {"if", "then", "else"} & out.keys():
            tests = [{k: out.pop(k) for k in ("if", "then", "else") if k in out}, *tests]
        conjuncts = []
        for test in tests:
            branches = logic.conditional({**out, **test}) if out.get("type") == "object" else None
            branches = logic.conditional_by_negation(test) if branches is None else branches
            if branches is None:
                return node
            conjuncts.append({"anyOf": branches})
        return self._distribute({**out, "allOf": [*out.get("allOf", []), *conjuncts]})

    def _split_types(self, node: dict) -> Any:
        """A `type` list beside keywords of those types: one alternative per type, each with
        only its own keywords (exact)."""
        types = node.get("type")
        if not isinstance(types, list) or len(types) < 2:
            return node
        per_type = [drop_other_types({**node, "type": t}) for t in types]
        if all(len(p) == len(per_type[0]) == len(node) for p in per_type):
            return node
        rest = {k: v for k, v in node.items() if k in _TARGETS}
        return {**rest, "anyOf": [self.rewrite({k: v for k, v in p.items() if k not in _TARGETS}) for p in per_type]}

    def _not(self, node: dict) -> Any:
        if "not" not in node:
            return node
        rest = {k: v for k, v in node.items() if k != "not"}
        out = logic.negate(rest, self.resolved(node["not"]))
        return node if out is None else out

    def _conditional(self, node: dict) -> Any:
        if not ({"if", "then", "else"} & node.keys()):
            return node
        rest = {k: v for k, v in node.items() if k not in ("if", "then", "else")}
        if "then" not in node and "else" not in node:
            return rest
        branches = logic.conditional(node) if node.get("type") == "object" else None
        branches = logic.conditional_by_negation(node) if branches is None else branches
        if branches is None:
            return node
        return {**rest, "anyOf": branches} if "anyOf" not in rest else {**rest, "allOf": [{"anyOf": branches}]}

    def _one_of(self, node: dict) -> dict:
        if not isinstance(node.get("oneOf"), list):
            return node
        rest = {k: v for k, v in node.items() if k != "oneOf"}
        branches = logic.one_of(rest, node["oneOf"], self.resolved, self.declared_type)
        if branches is None:
            return node
        if "anyOf" in rest:
            return {**rest, "allOf": [*rest.get("allOf", []), {"anyOf": branches}]}
        return {**rest, "anyOf": branches}

    def _containers(self, node: dict) -> Any:
        steps = (
            ("patternProperties", containers.universal_patterns),
            ("uniqueItems", containers.unique_items),
            ("contains", containers.contains),
            ("propertyNames", containers.property_names),
            ("minProperties", containers.min_max_properties),
            ("maxProperties", containers.min_max_properties),
            ("unevaluatedProperties", containers.unevaluated),
            ("unevaluatedItems", containers.unevaluated),
        )
        for key, step in steps:
            if isinstance(node, dict) and key in node:
                out = step(node)
                node = node if out is None else out
        return node

    def _distribute(self, node: dict) -> Any:
        """Alternatives (anyOf, dependencies, a leftover allOf of anyOfs) ANDed with the rest of
        the node, as one anyOf of merged branches; the node unchanged when that is not exact or
        has more than MAX_BRANCHES branches."""
        conjuncts, rest = self._conjuncts(node)
        if conjuncts is None:
            return containers.required_listed(node)
        if not conjuncts:
            return containers.required_listed(rest)
        targets = {k: rest.pop(k) for k in _TARGETS if k in rest}
        held = {k: rest.pop(k) for k in _UNEVALUATED if k in rest}  # read after each branch is merged
        if not rest and not held and len(conjuncts) == 1:
            return {**targets, "anyOf": [self._settled(b) for b in conjuncts[0]]}
        count = 1
        for alternatives in conjuncts:
            count *= len(alternatives)
        if count > MAX_BRANCHES:
            return node
        branches = []
        for combination in itertools.product(*conjuncts):
            merged: Any = rest
            for part in combination:
                merged = merge(merged, self.resolved(part)) if merged is not None else None
            if merged is None:
                return node
            if isinstance(merged, dict) and "anyOf" in merged or isinstance(merged, dict) and "allOf" in merged:
                merged = self.rewrite(merged)
            merged = _with_held(merged, held)
            if merged is None:
                return node
            if isinstance(merged, dict) and set(_UNEVALUATED) & merged.keys():
                merged = containers.unevaluated(merged) or merged  # a branch counts only its own evaluations
            if merged is not False:
                branches.append(containers.required_listed(merged) if isinstance(merged, dict) else merged)
        return {**targets, "anyOf": branches} if branches else False

    def _settled(self, branch: Any) -> Any:
        """A branch still holding an `allOf` (of alternatives), rewritten."""
        return self.rewrite(branch) if isinstance(branch, dict) and "allOf" in branch else branch

    def _conjuncts(self, node: dict) -> tuple[Optional[list[list[Any]]], dict]:
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "dependentRequired", "dependentSchemas", "allOf")}
        conjuncts: list[list[Any]] = []
        if isinstance(node.get("anyOf"), list):
            conjuncts.append(node["anyOf"])
        if "dependentRequired" in node or "dependentSchemas" in node:
            found = logic.dependencies(node)
            if found is None:
                return None, node
            conjuncts.extend(found)
        for part in node.get("allOf", []):
            if not (isinstance(part, dict) and part.keys() == {"anyOf"}):
                return None, node
            conjuncts.append(part["anyOf"])
        return conjuncts, rest
