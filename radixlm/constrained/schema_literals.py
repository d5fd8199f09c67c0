"""Whether one known JSON value provably fails a schema, by the keywords that read a value alone.

`fails(value, schema)` is True only when `schema` rejects `value` for sure, read from `type`,
`enum`, `const`, `pattern`, the length bounds and the numeric bounds; any other keyword (or a
malformed one) counts as unknown and the answer is False. The lowering pass uses it to prove a
`const`/`enum` branch disjoint from another branch.
"""

from __future__ import annotations

import re
from typing import Any

from radixlm.constrained.schema_merge import canonical, type_set

_READ = frozenset(
    ("type", "enum", "const", "pattern", "minLength", "maxLength")
    + ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
)


def fails(value: Any, schema: Any) -> bool:
    """True when `value` is provably invalid under `schema`; False when valid or unsure."""
    if schema is False:
        return True
    if not isinstance(schema, dict):
        return False
    return any(_fails_one(value, key, schema[key]) for key in schema.keys() & _READ)


def _fails_one(value: Any, key: str, arg: Any) -> bool:
    if key == "type":
        names = type_set(arg)
        return names is not None and not any(_has_type(value, name) for name in names)
    if key == "enum":
        return isinstance(arg, list) and canonical(value) not in {canonical(v) for v in arg}
    if key == "const":
        return canonical(value) != canonical(arg)
    if isinstance(value, str):
        return _string_fails(value, key, arg)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(arg, (int, float)):
        return _number_fails(value, key, arg)
    return False


def _string_fails(value: str, key: str, arg: Any) -> bool:
    if key == "pattern" and isinstance(arg, str):
        try:
            return re.search(arg, value) is None
        except re.error:
            return False
    if key in ("minLength", "maxLength") and isinstance(arg, int):
        return len(value) < arg if key == "minLength" else len(value) > arg
    return False


def _number_fails(value: float, key: str, arg: float) -> bool:
    return {
        "minimum": value < arg,
        "maximum": value > arg,
        "exclusiveMinimum": value <= arg,
        "exclusiveMaximum": value >= arg,
    }.get(key, False)


def _has_type(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return name == "number" or float(value).is_integer()
    return isinstance(value, {"string": str, "array": list, "object": dict}[name])
