"""What a request asks to be constrained by: one `GrammarSpec` built from its sampling params."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

KINDS = ("regex", "json_schema", "ebnf")


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint as given by the caller. Invariant: `kind` is one of KINDS and `text` is the
    spec's source (a JSON schema is kept as JSON text, in the caller's key order, because
    property order is the order the output is generated in). Equal specs compile to the same
    grammar, so a spec is the compile cache's key."""

    kind: str
    text: str

    @classmethod
    def from_params(cls, params: Any) -> Optional["GrammarSpec"]:
        """The constraint of validated SamplingParams (at most one is set), or None."""
        for kind in KINDS:
            value = getattr(params, kind, None)
            if value is not None:
                return cls(kind, value)
        return None

    def schema(self) -> Any:
        """The parsed JSON schema; ValueError naming the JSON error."""
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None

    def describe(self) -> str:
        return {"regex": "regex", "json_schema": "JSON schema", "ebnf": "EBNF grammar"}[self.kind]
