"""Finds the text every run of a program starts with, before running it, so `run_batch` can
cache that prefix once: the program runs on a `TracerState` with `Argument` stand-ins and
stops at the first part that depends on an argument or on the model."""

from __future__ import annotations

from typing import Any, Callable

from radixlm.lang.chat_template import ChatTemplate
from radixlm.lang.ir import Argument, Constant, Expr, ExprList, RoleBegin, RoleEnd, StopTracing, to_expr
from radixlm.lang.state import RoleScope


class TracerState:
    """A stand-in state that only collects constant text and role markers; never calls a backend."""

    def __init__(self, template: ChatTemplate) -> None:
        self.template = template
        self.prefix = ""

    def __iadd__(self, other: Any) -> "TracerState":
        self._add(to_expr(other))
        return self

    def _add(self, expr: Expr) -> None:
        for item in expr.items if isinstance(expr, ExprList) else (expr,):
            if isinstance(item, Constant):
                self.prefix += item.value
            elif isinstance(item, RoleBegin):
                self.prefix += self.template.begin(item.role, at_start=not self.prefix)
            elif isinstance(item, RoleEnd):
                self.prefix += self.template.end(item.role)
            else:
                raise StopTracing(type(item).__name__)

    def system(self, expr: Any = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role("assistant", expr)

    def _role(self, role: str, expr: Any) -> Any:
        if expr is None:
            return RoleScope(self._add, role)
        self._add(ExprList((RoleBegin(role), to_expr(expr), RoleEnd(role))))
        return None

    def __getitem__(self, name: str) -> Any:
        raise StopTracing(name)

    def __getattr__(self, name: str) -> Any:  # fork, text, messages, get_var...: model-dependent
        raise StopTracing(name)


def trace_prefix(func: Callable[..., Any], bound: dict[str, Any], template: ChatTemplate, arg_names: list[str]) -> str:
    """The constant text (with role markers) every run of the program `func` (with the arguments
    already `bound`) starts with."""
    tracer = TracerState(template)
    args = {**bound, **{name: Argument(name) for name in arg_names if name not in bound}}
    try:
        func(tracer, **args)
    except Exception:  # StopTracing, or a program that needs real values early: keep what was found
        pass
    return tracer.prefix
