"""Regular-expression facts and constructions the schema lowering pass relies on.

- `matches_every_string(p)`: True only when the JSON-schema `pattern` p (searched, not anchored)
  matches every string — it matches the empty string at position 0 using no assertion but a
  leading `^`, so the same empty match exists at position 0 of any string.
- `outside_strings(values)`: an anchored pattern that a string matches exactly when it is none of
  `values` (the complement of a finite set, built from the values' prefix tree), for values
  that do not end in a newline.
- `outside_class_run(p)`: for a pattern `^[C]+$` or `^[C]*$` (a string made only of characters
  of one class), its complement: strings holding a character outside C (and, for `+`, the empty
  string, which no pattern can single out: Python's `$` also matches before a final newline);
  only when the class holds the newline, for the same reason.
"""

from __future__ import annotations

import re
from typing import Optional

from radixlm.constrained.limits import _skip_class as skip_class

ANY = r"[\s\S]"  # any character, the newline included
_ASSERTION_ESCAPES = set("bBAZz")
_CLASS_RUN = re.compile(r"^\^(\[(?:\\.|[^\]\\])+\])([+*])\$$")


def matches_every_string(pattern: str) -> bool:
    """True when `pattern` provably matches (by search) every string; False when unsure."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    if not _free_of_assertions(body):
        return False
    try:
        return re.compile(pattern).match("") is not None
    except re.error:
        return False


def _free_of_assertions(regex: str) -> bool:
    """No anchor, word boundary, lookaround or inline flag anywhere in `regex`."""
    i = 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\":
            if regex[i + 1 : i + 2] in _ASSERTION_ESCAPES or regex[i + 1 : i + 2].isdigit():
                return False
            i += 2
            continue
        if ch == "[":
            i = skip_class(regex, i)
            continue
        if ch in "^$" or regex.startswith("(?", i) and not regex.startswith("(?:", i):
            return False
        i += 1
    return True


def outside_strings(values: list[str]) -> Optional[str]:
    """`^(...)$` matching exactly the strings not in `values`; None when a value ends in a
    newline (Python's `$` also matches before a final newline, so "x\n" would pass as "x")."""
    if any(value.endswith("\n") for value in values):
        return None
    trie: dict = {}
    for value in values:
        node = trie
        for ch in value:
            node = node.setdefault(ch, {})
        node[""] = {}
    return f"^(?:{_outside(trie)})$"


def _outside(node: dict) -> str:
    """Strings s such that (path to node) + s is not a member."""
    chars = sorted(k for k in node if k)
    parts = [] if "" in node else [""]  # the path itself, when it is not a member
    if chars:
        parts.append(f"[^{''.join(_in_class(c) for c in chars)}]{ANY}*")
        parts.extend(f"{re.escape(c)}(?:{_outside(node[c])})" for c in chars)
    else:
        parts.append(f"{ANY}+")
    return "|".join(parts)


def _in_class(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[" else ch


def outside_class_run(pattern: str) -> Optional[tuple[str, bool]]:
    """For `^[C]+$` / `^[C]*$`: (a pattern matching exactly the strings holding a character
    outside C, whether the empty string is in the complement too); None for other patterns."""
    found = _CLASS_RUN.match(pattern)
    if not found:
        return None
    cls, count = found.groups()
    try:
        if re.fullmatch(cls, "\n") is None:
            return None  # Python's `$` also matches before a final newline outside the class
    except re.error:
        return None
    outside = f"[{cls[2:-1]}]" if cls.startswith("[^") else f"[^{cls[1:-1]}]"
    return f"^{ANY}*{outside}{ANY}*$", count == "+"
