"""`ProgramState` (the `s` of a program) and `ProgramStateGroup` (what `s.fork(n)` returns)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

from radixlm.lang.interpreter import StreamExecutor, stream_chunks
from radixlm.lang.ir import Expr, ExprList, RoleBegin, RoleEnd, to_expr


class RoleScope:
    """`with s.user(): s += ...`: opens the role on entry and closes it on exit."""

    def __init__(self, add: Callable[[Expr], None], role: str) -> None:
        self._add, self.role = add, role

    def __enter__(self) -> "RoleScope":
        self._add(RoleBegin(self.role))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._add(RoleEnd(self.role))


class ProgramState:
    """A program's state: extend it with `+=`, read variables with `s["name"]` (waits for the
    gen that sets it), and read the whole `text()` / `messages()` (wait for everything)."""

    def __init__(self, executor: StreamExecutor) -> None:
        self.executor = executor

    # -- building ---------------------------------------------------------------------
    def __iadd__(self, other: Any) -> "ProgramState":
        self.executor.submit(to_expr(other))
        return self

    def system(self, expr: Any = None) -> Optional[RoleScope]:
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Optional[RoleScope]:
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Optional[RoleScope]:
        return self._role("assistant", expr)

    def _role(self, role: str, expr: Any) -> Optional[RoleScope]:
        if expr is None:
            return RoleScope(self.executor.submit, role)
        self.executor.submit(ExprList((RoleBegin(role), to_expr(expr), RoleEnd(role))))
        return None

    def fork(self, size: int = 1) -> "ProgramStateGroup":
        """`size` independent copies that continue from here in parallel (sharing its KV)."""
        marks = (len(self.text()), set(self.executor.variables))
        return ProgramStateGroup([ProgramState(e) for e in self.executor.fork(size)], self, marks)

    # -- reading --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.executor.get_var(name)

    def get_var(self, name: str) -> Any:
        return self.executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.executor.set_var(name, value)

    def __setitem__(self, name: str, value: Any) -> None:
        self.executor.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self.executor.variables

    def get_meta_info(self, name: str) -> dict:
        """What the backend reported for variable `name` (token counts, cached_tokens, finish
        reason; for select: each choice's normalized logprob and meta)."""
        self.executor.get_var(name)
        return self.executor.meta_info.get(name, {})

    def text(self) -> str:
        self.executor.sync()
        return self.executor.text

    def messages(self) -> list[dict]:
        """The finished messages, OpenAI-style (content parts when a message has images)."""
        self.executor.sync()
        return [m.to_openai() for m in self.executor.messages]

    def sync(self) -> None:
        self.executor.sync()

    def error(self) -> Optional[BaseException]:
        """The first error of this program (including its forks), or None."""
        return self.executor.first_error()

    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        """Streaming runs: the text (or one variable's text) chunk by chunk as it is produced;
        otherwise the whole text (or value) once. Raises the program's error at the end."""
        ex = self.executor
        if not ex.stream:
            yield self.text() if var_name is None else str(self[var_name])
            return
        yield from stream_chunks(ex, var_name)
        err = ex.error
        if err is not None and (var_name is None or var_name not in ex.variables):
            raise err

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup:
    """The states of one fork, list-like. `forks += expr` adds to every state (or one item of a
    list to each); `join()` waits for them and gathers their new variables into the parent."""

    def __init__(self, states: list[ProgramState], parent: ProgramState, marks: tuple[int, set]) -> None:
        self.states, self.parent = states, parent
        self._text_mark, self._vars_before = marks

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> "ProgramStateGroup":
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} expressions for {len(self.states)} forks")
            for state, expr in zip(self.states, other):
                state += expr
        else:
            for state in self.states:
                state += other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """`gather_variable`: parent[name] = [each fork's value] for variables the forks set;
        `concate_and_append`: append every fork's new text to the parent."""
        for state in self.states:
            state.sync()
        if mode == "gather_variable":
            names = {n for s in self.states for n in s.executor.variables} - self._vars_before
            for name in sorted(names):
                self.parent.set_var(name, [s.executor.variables.get(name) for s in self.states])
        elif mode == "concate_and_append":
            self.parent += "".join(s.text()[self._text_mark :] for s in self.states)
        else:
            raise ValueError(f"unknown join mode {mode!r}; use 'gather_variable' or 'concate_and_append'")
