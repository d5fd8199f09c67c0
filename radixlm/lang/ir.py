"""The frontend's intermediate representation: expression nodes a program appends to a state.

`s += "Q: " + question + gen("answer")` builds an `ExprList` of a `Constant` and a `Gen`;
the interpreter (`radixlm.lang.interpreter`) executes the nodes in order. Nodes are immutable.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional, Union

ROLES = ("system", "user", "assistant")

# Regexes a `gen(dtype=...)` is constrained to, and how its text becomes a value.
DTYPE_REGEX = {
    int: r"[-+]?[0-9]+",
    float: r"[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?",
    bool: r"(True|False)",
    str: r"\"[^\"\n]*\"",
}


class Expr:
    """A node of a program. `a + b` (with strings or nodes) builds an `ExprList`."""

    def __add__(self, other: Any) -> "ExprList":
        return ExprList((self, to_expr(other)))

    def __radd__(self, other: Any) -> "ExprList":
        return ExprList((to_expr(other), self))


@dataclass(frozen=True, eq=False)
class Constant(Expr):
    """Literal text appended to the state."""

    value: str


@dataclass(frozen=True, eq=False)
class Gen(Expr):
    """Generate text with `params` (None fields inherit the run's defaults); stored under `name`
    (when given) after conversion to `dtype`."""

    name: Optional[str]
    params: "SamplingSpec"
    dtype: Optional[type] = None


@dataclass(frozen=True, eq=False)
class Select(Expr):
    """Append the choice the model scores highest (token-length-normalized logprob)."""

    name: Optional[str]
    choices: tuple[str, ...]
    temperature: float = 0.0


@dataclass(frozen=True, eq=False)
class Image(Expr):
    """An image (file path, URL or raw bytes) placed in the current message."""

    source: Union[str, bytes]


@dataclass(frozen=True, eq=False)
class RoleBegin(Expr):
    role: str


@dataclass(frozen=True, eq=False)
class RoleEnd(Expr):
    role: str


class StopTracing(Exception):
    """The traced program reached something not known before it runs."""


@dataclass(frozen=True, eq=False)
class Argument(Expr):
    """A stand-in for a program argument while a program is traced (see `tracer.py`)."""

    name: str

    def __format__(self, spec: str) -> str:
        return self.__str__()

    def __str__(self) -> str:
        raise StopTracing(self.name)


class ExprList(Expr):
    """A flat sequence of nodes (nested lists are spliced in)."""

    def __init__(self, items: tuple[Expr, ...]) -> None:
        flat: list[Expr] = []
        for item in items:
            flat.extend(item.items if isinstance(item, ExprList) else (item,))
        self.items = tuple(flat)

    def __repr__(self) -> str:
        return f"ExprList({list(self.items)!r})"


def to_expr(value: Any) -> Expr:
    """Strings become `Constant`s; nodes pass through; anything else is a TypeError."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Constant(value)
    raise TypeError(
        f"cannot add a {type(value).__name__} to a program state: use a str or an expression "
        "(gen, select, image, a role)"
    )


def gen_names(expr: Expr) -> list[str]:
    """The variable names an expression will set."""
    items = expr.items if isinstance(expr, ExprList) else (expr,)
    return [e.name for e in items if isinstance(e, (Gen, Select)) and e.name is not None]


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling settings of one `gen`, SGLang's names. `None` means "inherit": a gen's spec is
    laid over the run's defaults with `merged_over`."""

    max_new_tokens: Optional[int] = None
    min_new_tokens: Optional[int] = None
    stop: Optional[Union[str, tuple[str, ...]]] = None
    stop_token_ids: Optional[tuple[int, ...]] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    ignore_eos: Optional[bool] = None
    regex: Optional[str] = None
    json_schema: Optional[Union[str, dict]] = None
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: Optional[bool] = None

    def merged_over(self, defaults: "SamplingSpec") -> "SamplingSpec":
        """This spec with every `None` field taken from `defaults`."""
        changes = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is None}
        return dataclasses.replace(self, **changes)

    @property
    def stops(self) -> list[str]:
        """Stop strings as a list (empty when none)."""
        if not self.stop:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def constrained(self) -> bool:
        return self.regex is not None or self.json_schema is not None

    def to_native(self) -> dict:
        """`sampling_params` for radixlm's / SGLang's native API and `Engine.generate`."""
        names = (
            "max_new_tokens",
            "min_new_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "frequency_penalty",
            "presence_penalty",
            "ignore_eos",
            "regex",
        )
        out = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.stops:
            out["stop"] = self.stops
        if self.stop_token_ids:
            out["stop_token_ids"] = list(self.stop_token_ids)
        if self.json_schema is not None:
            schema = self.json_schema
            out["json_schema"] = schema if isinstance(schema, str) else json.dumps(schema)
        return out


RUN_DEFAULTS = SamplingSpec(
    max_new_tokens=128,
    temperature=1.0,
    top_p=1.0,
    top_k=-1,
    min_p=0.0,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    ignore_eos=False,
)
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingSpec))
