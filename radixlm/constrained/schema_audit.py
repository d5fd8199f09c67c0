"""Which JSON-schema keywords xgrammar enforces, so that no keyword is silently ignored.

xgrammar compiles many schemas it does not fully enforce (it drops `not`, `if`/`then`,
`contains`, `allOf`, numeric bounds on untyped schemas, ...). `unenforced_keyword` walks a
schema and names the first keyword outside the set measured to be enforced (the JSON-Schema-Test-
Suite run in tests/e2e/test_constrained_json_suite.py is the evidence); such schemas go to another
backend or are refused.
"""

from __future__ import annotations

from typing import Any, Optional

from radixlm.constrained.limits import _skip_class as limits_skip_class

# Keywords that never constrain an instance.
ANNOTATIONS = frozenset(
    {
        "$schema",
        "$comment",
        "title",
        "description",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
    }
)
GENERIC = frozenset({"type", "enum", "const", "$ref", "anyOf"})
BY_TYPE = {
    "string": frozenset({"minLength", "maxLength", "pattern"}),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "number": frozenset(),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "boolean": frozenset(),
    "null": frozenset(),
}
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties")


def unenforced_keyword(schema: Any, path: str = "#") -> Optional[str]:
    """`keyword (at path)` for the first keyword xgrammar would not enforce, or None."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"a non-object schema (at {path})"
    problem = _own_keywords(schema, path)
    if problem:
        return problem
    return _children(schema, path)


def _own_keywords(schema: dict, path: str) -> Optional[str]:
    types = schema.get("type")
    allowed = set(ANNOTATIONS | GENERIC)
    if isinstance(types, str) and types in BY_TYPE:
        allowed |= BY_TYPE[types]
    for key, value in schema.items():
        if key not in allowed:
            return f"{key} (at {path})"
        if key == "$ref" and not (isinstance(value, str) and (value == "#" or value.startswith("#/"))):
            return f"$ref to another document (at {path})"
        if key == "$ref" and len(schema.keys() - ANNOTATIONS) > 1:
            return f"keywords beside $ref (at {path})"
        if key == "anyOf" and len(schema.keys() - ANNOTATIONS) > 1:
            return f"keywords beside anyOf (at {path})"
        if key in ("minLength", "maxLength", "minItems", "maxItems") and not _is_int(value):
            return f"{key} with a non-integer value (at {path})"
        if key == "pattern" and isinstance(value, str) and repeat_in_quantified_group(value):
            return f"pattern with a repeated part inside a quantified group (at {path})"  # xgrammar 0.2 drops the group
        if key in ("minLength", "maxLength") and "pattern" in schema:
            return f"{key} beside pattern (at {path})"  # xgrammar drops the length bound
        if key in BY_TYPE["integer"] and not _is_int(value):
            return f"{key} with a non-integer value (at {path})"
        if key == "required" and not (
            isinstance(value, list)
            and all(isinstance(name, str) and name in (schema.get("properties") or {}) for name in value)
        ):
            return f"required names missing from properties (at {path})"
    if _open_container(schema):
        return f"{types} with no properties/items listed (at {path})"
    return _check_literals(schema, path) or _utf8_length(schema, path)


def _utf8_length(schema: dict, path: str) -> Optional[str]:
    """xgrammar's UTF-8 matching admits overlong encodings (E0 82 92, F0 80 98 80), which the
    tokenizer decodes to several U+FFFD: a string it counted as within maxLength comes out
    longer (seen in tests/e2e/test_tools_reasoning.py), so length bounds go to llguidance."""
    for key in ("minLength", "maxLength"):
        if key in schema and schema.get("type") == "string":
            return f"{key} (at {path}): xgrammar counts overlong UTF-8 as one character"
    return None


def _open_container(schema: dict) -> bool:
    """An object or array schema that lists no members: xgrammar's strict mode (which keeps
    models from inventing keys) would allow only `{}` / `[]`; llguidance allows any members."""
    if schema.get("type") == "object":
        return not ({"properties", "additionalProperties"} & schema.keys())
    if schema.get("type") == "array":
        return not ({"items", "prefixItems"} & schema.keys())
    return False


def _check_literals(schema: dict, path: str) -> Optional[str]:
    """xgrammar generates enum/const values as given, ignoring every sibling constraint: safe
    only beside a `type` that each value already has."""
    for key in ("enum", "const"):
        if key not in schema:
            continue
        values = schema[key] if key == "enum" else [schema[key]]
        siblings = schema.keys() - ANNOTATIONS - {key, "type"}
        if siblings:
            return f"{sorted(siblings)[0]} beside {key} (at {path})"
        if "type" in schema and not all(_has_type(v, schema["type"]) for v in values):
            return f"type beside {key} with values of another type (at {path})"
    return None


def _has_type(value: Any, types: Any) -> bool:
    kinds = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "integer": _is_int(value) or (isinstance(value, float) and value.is_integer()),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    return any(kinds.get(t, False) for t in ([types] if isinstance(types, str) else types))


def _children(schema: dict, path: str) -> Optional[str]:
    for name, sub in (schema.get("properties") or {}).items():
        if sub is False:
            return f"a false schema for property {name!r} beside other allowed keys (at {path}/properties)"
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            problem = unenforced_keyword(sub, f"{path}/{key}/{name}")
            if problem:
                return problem
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or []):
            problem = unenforced_keyword(sub, f"{path}/{key}/{i}")
            if problem:
                return problem
    for key in _SUBSCHEMAS:
        if key in schema:
            problem = unenforced_keyword(schema[key], f"{path}/{key}")
            if problem:
                return problem
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def repeat_in_quantified_group(regex: str) -> bool:
    """True when a group followed by a quantifier (`?`, `*`, `+`, `{`) holds a repeated part
    (`+`, `*`, `{m,n}`). xgrammar 0.2 compiles such a JSON-schema `pattern` wrongly: for
    `^a(x[0-9]{1,3})?Z$` it accepts "a12Z" (its `from_regex` does not), so these go elsewhere."""
    opens: list[bool] = []  # per open group: does it hold a repetition so far
    i = 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i = limits_skip_class(regex, i)
            continue
        if ch == "(":
            opens.append(False)
        elif ch in "+*{" and opens:
            opens[-1] = True
        elif ch == ")" and opens:
            inner = opens.pop()
            if inner and i + 1 < len(regex) and regex[i + 1] in "?*+{":
                return True
            if inner and opens:
                opens[-1] = True
        i += 1
    return False
