"""Where subschemas sit inside a JSON schema (draft 2020-12 spelling), and a map over them.

Every pass of the schema lowering (`schema_lower.py`) walks schemas through `map_children`, so a
keyword's value is only ever treated as a schema where the specification says it is one (a
property *named* `description` is a property, never an annotation)."""

from __future__ import annotations

from typing import Any, Callable, Optional

SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SUBSCHEMAS = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
# Keywords that constrain an instance (or locate a schema), beside the subschema keywords above.
VALUE_KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "const",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "format",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxContains",
        "minContains",
        "maxProperties",
        "minProperties",
        "required",
        "dependentRequired",
        "$ref",
        "$dynamicRef",
        "$recursiveRef",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$recursiveAnchor",
    }
)
KNOWN = VALUE_KEYWORDS | set(SUBSCHEMA_MAPS) | set(SUBSCHEMA_LISTS) | set(SUBSCHEMAS)

Schema = Any  # a dict or a bool


def map_children(schema: dict, fn: Callable[[Schema, str], Schema], path: str) -> dict:
    """A shallow copy of `schema` with `fn(subschema, pointer)` applied to each direct subschema;
    values that are not where a subschema belongs are kept as given."""
    out = dict(schema)
    for key in SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: fn(sub, f"{path}/{key}/{_escape(name)}") for name, sub in out[key].items()}
    for key in SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [fn(sub, f"{path}/{key}/{i}") for i, sub in enumerate(out[key])]
    for key in SUBSCHEMAS:
        if key in out and isinstance(out[key], (dict, bool)):
            out[key] = fn(out[key], f"{path}/{key}")
    return out


def children(schema: dict) -> list[Schema]:
    """The direct subschemas of `schema`."""
    found: list[Schema] = []
    map_children(schema, lambda sub, _path: found.append(sub) or sub, "#")
    return found


def walk(schema: Schema) -> list[dict]:
    """Every object schema reachable from `schema` (itself included), without following $ref."""
    out, stack = [], [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.append(node)
            stack.extend(children(node))
    return out


def resolve_pointer(root: Schema, ref: str) -> Any:
    """The subschema a local `#/...` reference names; KeyError when it names nothing."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise KeyError(ref)
    node = root
    for part in ref[2:].split("/"):
        part = _unescape(part)
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(ref)
    return node


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    from urllib.parse import unquote

    return unquote(part).replace("~1", "/").replace("~0", "~")


def hoist_refs(root: Any, prefix: str = "radixlm_ref_") -> Any:
    """`root` with every local `$ref` that does not name a `$defs`/`definitions` entry (a
    pointer into `properties`, into an unknown keyword, ...) redirected to a copy of its target
    under `$defs`, so that later passes may reshape the tree freely. A copy of the document is
    returned (unchanged when there is nothing to hoist)."""
    if not isinstance(root, dict):
        return root
    odd = sorted({ref for ref in _all_refs(root) if _needs_hoist(ref)})
    if not odd:
        return root
    names = {ref: f"{prefix}{i}" for i, ref in enumerate(odd)}
    copies = {}
    for ref, name in names.items():
        try:
            copies[name] = _redirect(_resolve_local(root, ref), names)
        except KeyError:
            continue
    out = _redirect(root, {ref: name for ref, name in names.items() if name in copies})
    out["$defs"] = {**out.get("$defs", {}), **copies}
    return out


def _resolve_local(root: Any, ref: str) -> Any:
    """A `#/pointer` or a `#name` plain-name fragment (`$anchor`); KeyError when it names nothing."""
    if ref.startswith("#/") or ref == "#":
        return resolve_pointer(root, ref)
    for node in _all_dicts(root):
        if ref[1:] in (node.get("$anchor"), node.get("$dynamicAnchor")):
            return node
    raise KeyError(ref)


def _all_dicts(root: Any) -> list[dict]:
    found, stack = [], [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _needs_hoist(ref: str) -> bool:
    if ref.startswith("#") and len(ref) > 1 and not ref.startswith("#/"):
        return True  # a plain-name fragment ($anchor)
    if not ref.startswith("#/"):
        return False
    parts = ref[2:].split("/")
    return not (len(parts) == 2 and parts[0] in ("$defs", "definitions"))


def _all_refs(node: Any) -> list[str]:
    return [d["$ref"] for d in _all_dicts(node) if isinstance(d.get("$ref"), str)]


def _redirect(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _redirect(v, names) for k, v in node.items()}
        if isinstance(out.get("$ref"), str) and out["$ref"] in names:
            out["$ref"] = f"#/$defs/{names[out['$ref']]}"
        return out
    if isinstance(node, list):
        return [_redirect(v, names) for v in node]
    return node


def non_pointer_ref(schema: Any) -> Optional[str]:
    """The first `$ref` that is not a local JSON pointer (`#` or `#/...`): a remote document or a
    name no anchor resolved; None when there is none."""
    for ref in _all_refs(schema):
        if ref != "#" and not ref.startswith("#/"):
            return ref
    return None
