"""Bounds that keep a hostile constraint from stalling the server.

Grammar engines expand counted repetition (`x{n,m}`); nested counts multiply. One regex such as
`a{1000000000}` makes xgrammar hang, so counted repetition is priced before any backend sees it.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

MAX_REPEAT_PRODUCT = 100_000  # product of nested {n,m} upper bounds in one regex
MAX_JUMP_FORWARD_CHARS = 256  # forced text appended in one step; the rest is forced next step
COMPILE_TIMEOUT_S = 30.0  # a compile still running after this is refused (its thread is abandoned)
MAX_NESTING = 128  # bracket depth of a JSON schema, regex or EBNF grammar (parsers recurse on it)

_COUNT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_JSON_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|[\[\]{}]')
_GRAMMAR_TOKENS = re.compile(r"\\.|\[(?:\\.|[^\]\\])*\]|[()]")  # escapes and classes hide parentheses


def check_regex_cost(regex: str, where: str = "regex") -> None:
    """ValueError when nested counted repetition in `regex` multiplies past MAX_REPEAT_PRODUCT.

    A linear scan: escapes and character classes are skipped, groups form a stack, and each
    `{n,m}` multiplies the group (or atom) it follows by max(n, m)."""
    stack = [1]  # repetition factor accumulated inside each open group
    last_group = 1  # factor of the most recently closed group (for a count right after ")")
    i, after_group = 0, False
    while i < len(regex):
        ch = regex[i]
        if ch == "\\":
            i, after_group = i + 2, False
            continue
        if ch == "[":
            i, after_group = _skip_class(regex, i), False
            continue
        if ch == "(":
            stack.append(1)
        elif ch == ")" and len(stack) > 1:
            last_group = stack.pop()
            after_group = True
            i += 1
            continue
        elif ch == "{":
            match = _COUNT.match(regex, i)
            if match:
                count = max(int(match.group(1)), int(match.group(2) or 0))
                inner = last_group if after_group else 1
                stack[-1] = max(stack[-1], inner * max(count, 1))
                _check_product(stack, where)
                i, after_group = match.end(), False
                continue
        if after_group:
            stack[-1] = max(stack[-1], last_group)
        after_group = False
        i += 1
    if after_group:
        stack[-1] = max(stack[-1], last_group)
    _check_product(stack, where)


def _skip_class(regex: str, i: int) -> int:
    """Index just past the character class opening at regex[i]."""
    j = i + 1
    if j < len(regex) and regex[j] == "^":
        j += 1
    if j < len(regex) and regex[j] == "]":
        j += 1
    while j < len(regex) and regex[j] != "]":
        j += 2 if regex[j] == "\\" else 1
    return j + 1


def _check_product(stack: list[int], where: str) -> None:
    product = 1
    for factor in stack:
        product *= factor
    if product > MAX_REPEAT_PRODUCT:
        raise ValueError(
            f"{where}: nested counted repetition expands to {product} repeats, more than "
            f"the limit of {MAX_REPEAT_PRODUCT}"
        )


def check_ebnf_cost(grammar: str) -> None:
    """ValueError when one counted repetition in an EBNF/Lark grammar exceeds MAX_REPEAT_PRODUCT
    (rules can nest counts through references, so each single count is bounded)."""
    for match in _COUNT.finditer(grammar):
        count = max(int(match.group(1)), int(match.group(2) or 0))
        if count > MAX_REPEAT_PRODUCT:
            raise ValueError(f"ebnf: repetition count {count} exceeds the limit of {MAX_REPEAT_PRODUCT}")


def schema_patterns(schema: Any) -> Iterator[str]:
    """Every regex in a JSON schema: `pattern` values and `patternProperties` keys."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from (k for k in value if isinstance(k, str))
            if key not in ("enum", "const", "default", "examples"):
                yield from schema_patterns(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from schema_patterns(item)


def nesting_error(kind: str, value: Any) -> str | None:
    """Why constraint `kind` ("regex", "json_schema", "ebnf"; a schema as text or as parsed
    JSON) is nested too deeply for the parsers, which recurse on its depth; None when it is fine.
    Counted without recursion, so any depth is safe to check."""
    if kind == "json_schema":
        depth = json_depth(value) if isinstance(value, str) else object_depth(value)
        if depth > MAX_NESTING:
            return f"json_schema: nested {depth} levels deep, more than the limit of {MAX_NESTING}"
    elif isinstance(value, str) and grammar_depth(value) > MAX_NESTING:
        return f"{kind}: parentheses nested more than {MAX_NESTING} levels deep"
    return None


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
