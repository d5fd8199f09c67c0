"""Older JSON-schema drafts (04, 06, 07, 2019-09) read in draft 2020-12 spelling.

`draft_of` reads the root's `$schema` (absent or unknown: 2020-12, whose semantics apply, with
the older spellings still accepted). `modernize` rewrites one schema node, never its children:
- `dependencies` → `dependentRequired` (array values) and `dependentSchemas` (schema values);
- an `items` array → `prefixItems`, `additionalItems` → `items` (dropped when `items` was not an
  array, where it never applied);
- draft-04 boolean `exclusiveMaximum`/`exclusiveMinimum` → the numeric form;
- draft-04 `id` → `$id`;
- a count bound written with a fraction of zero (`maxLength: 2.0`) → the integer;
- `then`/`else` without `if`, and `minContains`/`maxContains` without `contains` → dropped
  (the specification says they then do nothing);
- up to draft 07, keywords beside `$ref` are ignored by the specification, so they are dropped
  (except `definitions`/`$defs`, which references may point into).
Invariant: the node validates exactly the instances the original validated under its draft,
but for one draft-04 difference left as is: there `2.0` is not an "integer" (2020-12 says it
is); grammars write integers without a fraction, so generated output is unaffected.
"""

from __future__ import annotations

from typing import Any

DRAFTS = {"draft-03": 4, "draft-04": 4, "draft-06": 6, "draft-07": 7, "2019-09": 2019, "2020-12": 2020}
LATEST = 2020


def draft_of(root: Any) -> int:
    """4, 6, 7, 2019 or 2020 from the root's `$schema` (draft-03 is read as 04)."""
    uri = root.get("$schema") if isinstance(root, dict) else None
    if isinstance(uri, str):
        for marker, draft in DRAFTS.items():
            if marker in uri:
                return draft
    return LATEST


def modernize(node: dict, draft: int) -> dict:
    """`node` in 2020-12 spelling (a copy when anything changed)."""
    out = dict(node)
    if draft <= 7 and "$ref" in out:
        out = {k: v for k, v in out.items() if k in ("$ref", "definitions", "$defs")}
    if draft == 4 and "id" in out and isinstance(out["id"], str):
        out.setdefault("$id", out.pop("id"))
    _split_dependencies(out)
    _tuple_items(out)
    _drop_idle(out)
    for bound, exclusive in (("maximum", "exclusiveMaximum"), ("minimum", "exclusiveMinimum")):
        if isinstance(out.get(exclusive), bool):
            if out.pop(exclusive) and bound in out:
                out[exclusive] = out.pop(bound)
    return out


COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
COUNTS += ("minContains", "maxContains")


def _drop_idle(out: dict) -> None:
    for key in COUNTS:
        value = out.get(key)
        if isinstance(value, float) and value.is_integer():
            out[key] = int(value)
    if "if" not in out:
        out.pop("then", None)
        out.pop("else", None)
    if "contains" not in out:
        out.pop("minContains", None)
        out.pop("maxContains", None)


def _split_dependencies(out: dict) -> None:
    deps = out.pop("dependencies", None)
    if not isinstance(deps, dict):
        return
    required = {k: v for k, v in deps.items() if isinstance(v, list)}
    schemas = {k: v for k, v in deps.items() if not isinstance(v, list)}
    if required:
        out["dependentRequired"] = {**required, **out.get("dependentRequired", {})}
    if schemas:
        out["dependentSchemas"] = {**schemas, **out.get("dependentSchemas", {})}


def _tuple_items(out: dict) -> None:
    extra = out.pop("additionalItems", None)
    if isinstance(out.get("items"), list):
        out["prefixItems"] = out.pop("items")
        if extra is not None:
            out["items"] = extra
