"""Schema rewrites applied before xgrammar compiles a JSON schema (after the lowering pass shared
with llguidance), each making xgrammar enforce what it would otherwise get wrong.

xgrammar (0.2.x) compiles a string's `minLength`/`maxLength` to a character class that lets raw
control characters (U+0000–U+001F) into the string, which is not JSON. A length-bounded string
without a `pattern` is rewritten as the equivalent `pattern` over literal characters, which
xgrammar enforces correctly (escape sequences are left out: still a subset of what the schema
allows, so every output conforms). Invariant: the rewritten schema accepts a subset of the
original schema's instances and never an instance the original rejects.
"""

from __future__ import annotations

from typing import Any

from radixlm.constrained.schema_lower import lower_schema

# One JSON string character written literally: not a quote, a backslash or a control character,
# nor a UTF-16 surrogate (xgrammar's negated class admits the bytes ED A0..BF xx of an encoded
# surrogate, which is not UTF-8: the text then decodes to U+FFFD x 3, over maxLength).
LITERAL_CHAR = r'[^"\\\x00-\x1f\ud800-\udfff]'
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties")


def for_xgrammar(schema: Any) -> Any:
    """The schema as xgrammar gets it: lowered (`schema_lower`), then the rewrites above."""
    return bound_strings_as_patterns(drop_forbidden_properties(lower_schema(schema)))


def audited(schema: Any) -> Any:
    """The schema the xgrammar audit reads: lowered (formats as patterns, logic keywords as
    `anyOf`), before the length bounds become patterns, so that the audit still sees (and
    refuses) them."""
    return drop_forbidden_properties(lower_schema(schema))


def bound_strings_as_patterns(schema: Any) -> Any:
    """A copy of `schema` with length-only string bounds turned into patterns; other values as given."""
    if not isinstance(schema, dict):
        return schema
    out = {**schema}
    if _length_only_string(out):
        low, high = out.pop("minLength", 0), out.pop("maxLength", None)
        out["pattern"] = f"^{LITERAL_CHAR}{{{low},{'' if high is None else high}}}$"
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: bound_strings_as_patterns(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [bound_strings_as_patterns(sub) for sub in out[key]]
    for key in _SUBSCHEMAS:
        if key in out:
            out[key] = bound_strings_as_patterns(out[key])
    return out


def drop_forbidden_properties(schema: Any) -> Any:
    """A copy of `schema` where `properties: {k: false}` entries are removed from objects that
    allow no other keys (`additionalProperties` false or absent, which xgrammar reads as false,
    no `patternProperties`): there, an unlisted key is already forbidden. Elsewhere the false
    entries stay, and the audit refuses them."""
    if not isinstance(schema, dict):
        return schema
    out = {**schema}
    props = out.get("properties")
    closed = out.get("additionalProperties", False) is False and "patternProperties" not in out
    if isinstance(props, dict) and closed and any(v is False for v in props.values()):
        forbidden = {k for k, v in props.items() if v is False}
        if not forbidden & set(out.get("required") or []):
            out["properties"] = {k: v for k, v in props.items() if v is not False}
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: drop_forbidden_properties(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [drop_forbidden_properties(sub) for sub in out[key]]
    for key in _SUBSCHEMAS:
        if key in out:
            out[key] = drop_forbidden_properties(out[key])
    return out


def _length_only_string(schema: dict) -> bool:
    """A string with valid length bounds and no pattern (invalid bounds are left for the backend's error)."""
    bounds = [schema.get(k) for k in ("minLength", "maxLength") if k in schema]
    if schema.get("type") != "string" or "pattern" in schema or not bounds:
        return False
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bounds):
        return False
    return schema.get("minLength", 0) <= schema.get("maxLength", schema.get("minLength", 0))
