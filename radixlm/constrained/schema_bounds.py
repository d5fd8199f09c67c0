"""The instances failing one bound keyword, as a schema: the complements `not` needs.

`failing_bound(key, value)` is a schema valid for exactly the instances invalid under
`{key: value}` (a bound only ever rejects instances of its own type), or None for a keyword
that is not a bound or a malformed value.
"""

from __future__ import annotations

from typing import Any, Optional

_NUMERIC = {
    "minimum": "exclusiveMaximum",
    "maximum": "exclusiveMinimum",
    "exclusiveMinimum": "maximum",
    "exclusiveMaximum": "minimum",
}
_COUNTS = {
    "minLength": ("string", "maxLength", -1),
    "maxLength": ("string", "minLength", 1),
    "minItems": ("array", "maxItems", -1),
    "maxItems": ("array", "minItems", 1),
    "minProperties": ("object", "maxProperties", -1),
    "maxProperties": ("object", "minProperties", 1),
}
BOUNDS = frozenset(_NUMERIC) | frozenset(_COUNTS)


def failing_bound(key: str, value: Any) -> Optional[Any]:
    """The schema of the instances `{key: value}` rejects; None when unknown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if key in _NUMERIC:
        return {"type": "number", _NUMERIC[key]: value}
    if key not in _COUNTS or not float(value).is_integer() or value < 0:
        return None
    kind, opposite, step = _COUNTS[key]
    if int(value) + step < 0:
        return False  # minLength 0 (and the like) rejects nothing
    return {"type": kind, opposite: int(value) + step}
