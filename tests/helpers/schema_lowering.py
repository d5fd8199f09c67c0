"""The lowering pass checked against the original schema (tests/unit/test_schema_lower*.py):
hypothesis instances over a few keys and values the hand-written schemas use, and
`lowered_agrees`, which validates one instance against both schemas with `jsonschema`."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from helpers.schema_checks import is_valid
from radixlm.constrained.schema_lower import lower_schema

KEYS = ["a", "b", "c", "kind", "x", "description"]
SCALARS = st.none() | st.booleans() | st.integers(-3, 12) | st.sampled_from([1.5, -0.5, 2.0]) | st.text(max_size=4)
VALUES = st.recursive(
    SCALARS | st.sampled_from(["a", "b", "module", "theme", "", "aaaa", "upstart", "up", " .", "-\n", "a."]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)


def lowered_agrees(original: Any, instance: Any, exact: bool) -> None:
    """Lowered ⇒ original always; and original ⇒ lowered when the rewrite is exact."""
    lowered = lower_schema(original)
    before, after = is_valid(instance, original), is_valid(instance, {**_meta(original), **_as_dict(lowered)})
    assert not after or before, f"lowered {json.dumps(lowered)} accepts {instance!r}, the original rejects it"
    if exact:
        assert before == after, f"lowered {json.dumps(lowered)} rejects {instance!r}, the original accepts it"


def _as_dict(schema: Any) -> Any:
    return schema if isinstance(schema, dict) else {"not": {}} if schema is False else {}


def _meta(original: Any) -> dict:
    """Validate the lowered schema as 2020-12, which is what it is written in."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema"}


# an exact rewrite (test_schema_lower.EXACT) whose route the router test also checks
ONE_OF_BY_CONST = {
    "type": "object",
    "properties": {"kind": {"enum": ["a", "b"]}, "x": {"type": "integer"}},
    "oneOf": [
        {"properties": {"kind": {"const": "a"}}, "required": ["kind"]},
        {"properties": {"kind": {"const": "b"}, "x": {"minimum": 3}}, "required": ["kind", "x"]},
    ],
}
