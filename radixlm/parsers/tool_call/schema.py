"""The JSON schema that constrains a `required` or named `tool_choice` to valid calls."""

from __future__ import annotations

from typing import Any, Optional


def tool_calls_schema(tools: list[dict], only: Optional[str], parallel: bool) -> dict:
    """A schema for `[{"name": ..., "arguments": ...}, ...]` (the `json_array` format): at least
    one call; each names one of `tools` (or just `only`) and has arguments valid against that
    tool's `parameters` (any object when it has none); at most one call unless `parallel`.
    `tools` are OpenAI tool objects already checked to be functions with unique names."""
    chosen = [t["function"] for t in tools if only is None or t["function"]["name"] == only]
    variants = [_call_schema(fn) for fn in chosen]
    items = variants[0] if len(variants) == 1 else {"anyOf": variants}
    schema: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _call_schema(function: dict) -> dict:
    params = function.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
