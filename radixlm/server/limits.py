"""Request limits the HTTP front enforces before any work starts: things a client may send
that are valid in principle but would stall or crash the server (a million samples, a JSON
schema nested a thousand levels deep that overflows a parser's recursion)."""

from __future__ import annotations

import re
from typing import Any

MAX_N = 128  # samples per prompt (OpenAI's cap)
MAX_NESTING = 128  # bracket depth of a JSON schema, regex or EBNF grammar
MAX_STOPS, MAX_STOP_CHARS = 64, 1024  # stop strings are matched at every step: keep them small

_JSON_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|[\[\]{}]')
_GRAMMAR_TOKENS = re.compile(r"\\.|\[(?:\\.|[^\]\\])*\]|[()]")  # escapes and classes hide parentheses


def check_sampling_limits(sampling_params: Any) -> None:
    """Raise ValueError naming the first limit a request's sampling params break."""
    for params in sampling_params if isinstance(sampling_params, list) else [sampling_params]:
        if isinstance(params, dict):
            _check_params(params)


def _check_params(params: dict) -> None:
    n = params.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_N:
        raise ValueError(f"n: at most {MAX_N} samples per prompt (got {n})")
    stop = params.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > MAX_STOPS or any(isinstance(s, str) and len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"stop: at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
    schema = params.get("json_schema")
    depth = json_depth(schema) if isinstance(schema, str) else object_depth(schema)
    if depth > MAX_NESTING:
        raise ValueError(f"json_schema: nested {depth} levels deep, more than the limit of {MAX_NESTING}")
    for name in ("regex", "ebnf"):
        text = params.get(name)
        if isinstance(text, str) and grammar_depth(text) > MAX_NESTING:
            raise ValueError(f"{name}: parentheses nested more than {MAX_NESTING} levels deep")


def json_depth(text: str) -> int:
    """Deepest bracket nesting of JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def object_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (dicts and lists), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        else:
            continue
        deepest = max(deepest, depth + 1)
    return deepest


def grammar_depth(text: str) -> int:
    """Deepest parenthesis nesting of a regex or EBNF text (escapes and [...] skipped)."""
    depth = deepest = 0
    for match in _GRAMMAR_TOKENS.finditer(text):
        token = match.group()
        if token == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif token == ")":
            depth -= 1
    return deepest
