"""The interpreter: one `StreamExecutor` per state stream runs that stream's IR queue on its
own worker thread, so `s += gen(...)` returns at once and forked streams generate in parallel.

Invariants: expressions of one stream execute in submission order; after a failure the rest of
the queue is skipped (never executed, never waited on forever); a reader of a variable waits
only while an expression that sets it is still queued or running.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator, Optional

from radixlm.lang.backend.base import BaseBackend, Message, Prompt
from radixlm.lang.errors import LangError, ProgramError, UnsupportedFeatureError
from radixlm.lang.images import load_image
from radixlm.lang.ir import Constant, Expr, ExprList, Gen, Image, RoleBegin, RoleEnd, SamplingSpec, Select, gen_names
from radixlm.lang.speculative import chat_spec_items, consume_constant, cut_at_stop, match_reply

_END = object()


@dataclasses.dataclass
class _Barrier:
    event: threading.Event


@dataclasses.dataclass
class _Call:
    """An internal operation run in order on the worker (e.g. caching the prefix before a fork)."""

    fn: Callable[[], None]


class StreamExecutor:
    """Executes the expressions of one state stream. Thread-safe: the program's thread submits,
    the worker executes, any thread reads (under `cond`)."""

    def __init__(
        self, backend: BaseBackend, defaults: SamplingSpec, stream: bool = False, spec_tokens: Optional[int] = None
    ) -> None:
        self.backend, self.defaults = backend, defaults
        self.stream = stream
        self.spec_tokens = spec_tokens if backend.speculative_execution else None
        self.text = ""
        self.messages: list[Message] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.partial: dict[str, str] = {}  # each variable's text so far (what streaming readers see)
        self.role: Optional[str] = None
        self.role_start = 0
        self.role_images: list = []
        self.spec_text = ""  # speculated continuation not yet consumed (completion models)
        self.children: list[StreamExecutor] = []
        self.error: Optional[BaseException] = None
        self.cond = threading.Condition()
        self.finished = threading.Event()
        self._pending: dict[str, int] = {}  # variable -> expressions queued or running that set it
        self._declared: set[str] = set()  # every variable some submitted expression sets
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        threading.Thread(target=self._work, daemon=True, name="radixlm-lang-stream").start()

    # -- the program's side ------------------------------------------------------------
    def submit(self, item: Any) -> None:
        with self.cond:
            if self._closed:
                raise LangError("the program has finished: its state can be read, not extended")
            for name in gen_names(item) if isinstance(item, Expr) else ():
                self._pending[name] = self._pending.get(name, 0) + 1
                self._declared.add(name)
            self._queue.put(item)

    def sync(self) -> None:
        """Wait until everything submitted so far has executed."""
        with self.cond:
            if self._closed:
                done = self.finished
            else:
                done = threading.Event()
                self._queue.put(_Barrier(done))
        done.wait()

    def sync_all(self) -> None:
        """`sync` this stream and every stream forked from it."""
        self.sync()
        for child in list(self.children):
            child.sync_all()

    def end(self) -> None:
        """No more expressions: the worker finishes the queue and exits (forks end too)."""
        with self.cond:
            if not self._closed:
                self._closed = True
                self._queue.put(_END)
            children = list(self.children)
        for child in children:
            child.end()

    def record_error(self, exc: BaseException) -> None:
        """Keep the first error; later expressions are skipped and waiting readers wake up."""
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()

    def first_error(self) -> Optional[BaseException]:
        """This stream's error, else the first error of a forked stream."""
        if self.error is not None:
            return self.error
        for child in list(self.children):
            err = child.first_error()
            if err is not None:
                return err
        return None

    def get_var(self, name: str) -> Any:
        with self.cond:
            if name not in self._declared and name not in self.variables:
                known = sorted(set(self.variables) | self._declared)
                raise KeyError(
                    f"unknown variable {name!r}: no gen/select named {name!r} was added to this state (known: {known})"
                )
            self.cond.wait_for(lambda: self._pending.get(name, 0) == 0)
            if name in self.variables:
                return self.variables[name]
            raise ProgramError(f"variable {name!r} was not produced: {self.error}") from self.error

    def set_var(self, name: str, value: Any) -> None:
        with self.cond:
            self.variables[name] = value
            self.cond.notify_all()

    def fork(self, size: int) -> list["StreamExecutor"]:
        """`size` copies of this stream, made once everything submitted has executed. The
        backend caches this stream's text first, so the copies share its KV."""
        if size < 1:
            raise ValueError(f"fork size must be >= 1 (got {size})")
        self.submit(_Call(lambda: self.backend.cache_prefix(self.text)))
        self.sync()
        if self.error is not None:
            raise ProgramError(f"cannot fork a failed state: {self.error}") from self.error
        with self.cond:
            kids = [self._copy() for _ in range(size)]
            self.children.extend(kids)
        return kids

    def _copy(self) -> "StreamExecutor":
        kid = StreamExecutor(self.backend, self.defaults, stream=False, spec_tokens=self.spec_tokens)
        kid.text, kid.role, kid.role_start = self.text, self.role, self.role_start
        kid.messages = [dataclasses.replace(m, images=list(m.images)) for m in self.messages]
        kid.variables, kid.meta_info = dict(self.variables), dict(self.meta_info)
        kid._declared = set(self.variables)
        kid.role_images = list(self.role_images)
        return kid

    # -- the worker's side ----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                break
            if isinstance(item, _Barrier):
                item.event.set()
                continue
            try:
                if self.error is None:
                    self._execute(item)
            except BaseException as exc:
                self.record_error(exc if isinstance(exc, ProgramError) else _wrap(item, exc))
            finally:
                self._done(item)
        with self.cond:
            self.finished.set()
            self.cond.notify_all()

    def _done(self, item: Any) -> None:
        with self.cond:
            for name in gen_names(item) if isinstance(item, Expr) else ():
                self._pending[name] -= 1
                if not self._pending[name]:
                    del self._pending[name]
            self.cond.notify_all()

    def _execute(self, item: Any) -> None:
        if isinstance(item, _Call):
            item.fn()
        elif isinstance(item, ExprList):
            if not self._chat_speculative(item.items):
                for sub in item.items:
                    self._execute_one(sub)
        else:
            self._execute_one(item)

    def _execute_one(self, expr: Expr) -> None:
        handlers: dict[type, Callable[[Any], None]] = {
            Constant: self._fill,
            Gen: self._gen,
            Select: self._select,
            Image: self._image,
            RoleBegin: self._role_begin,
            RoleEnd: self._role_end,
        }
        handler = handlers.get(type(expr))
        if handler is None:
            raise LangError(f"cannot execute {expr!r}")
        try:
            handler(expr)
        except ProgramError:
            raise
        except BaseException as exc:
            raise _wrap(expr, exc) from exc

    def _append(self, text: str, var: Optional[str] = None) -> None:
        with self.cond:
            self.text += text
            if var is not None:
                self.partial[var] = self.partial.get(var, "") + text
            self.cond.notify_all()

    def _set(self, name: Optional[str], value: Any, meta: dict) -> None:
        if name is None:
            return
        with self.cond:
            self.variables[name] = value
            self.meta_info[name] = meta
            self.cond.notify_all()

    def _prompt(self) -> Prompt:
        with self.cond:
            role_text = self.text[self.role_start :] if self.role else ""
            return Prompt(self.text, list(self.messages), self.role, role_text, list(self.role_images))

    # -- expressions ---------------------------------------------------------------------------
    def _fill(self, expr: Constant) -> None:
        if self.spec_text:
            self.spec_text = consume_constant(self.spec_text, expr.value)
        self._append(expr.value)

    def _role_begin(self, expr: RoleBegin) -> None:
        if self.role is not None:
            raise LangError(f"cannot open a {expr.role} message inside the open {self.role} message")
        self._append(self.backend.chat_template.begin(expr.role, at_start=not self.text))
        with self.cond:
            self.role, self.role_start, self.role_images = expr.role, len(self.text), []

    def _role_end(self, expr: RoleEnd) -> None:
        if self.role != expr.role:
            raise LangError(f"{expr.role}_end() without a matching {expr.role}_begin() (open: {self.role})")
        with self.cond:
            self.messages.append(Message(expr.role, self.text[self.role_start :], self.role_images))
            self.role, self.role_images = None, []
        self._append(self.backend.chat_template.end(expr.role))

    def _image(self, expr: Image) -> None:
        if not self.backend.supports_images:
            raise UnsupportedFeatureError(
                f"image(): {type(self.backend).__name__} serves a text-only model; "
                "images need a multimodal backend (e.g. OpenAI or Anthropic)"
            )
        if self.role is None:
            raise LangError("image() must be inside a message, e.g. user(image(path) + question)")
        with self.cond:
            self.role_images.append(load_image(expr.source))
        if self.backend.image_token:
            self._append(self.backend.image_token)

    def _gen(self, expr: Gen) -> None:
        spec = expr.params.merged_over(self.defaults)
        self.backend.check_constraints(spec)
        with self.cond:
            if expr.name is not None:
                self.partial[expr.name] = ""
        if self.spec_tokens and not self.backend.is_chat_model and spec.stops and not self.stream:
            value, meta = self._speculative_gen(spec)
            self._append(value, expr.name)
        elif self.stream:
            value, meta = "", {}
            for chunk, meta in self.backend.generate_stream(self._prompt(), spec):  # noqa: B007 (the last chunk's meta)
                value += chunk
                self._append(chunk, expr.name)
        else:
            value, meta = self.backend.generate(self._prompt(), spec)
            self._append(value, expr.name)
        self._set(expr.name, convert(value, expr.dtype), meta)

    def _select(self, expr: Select) -> None:
        result = self.backend.select(self._prompt(), expr.choices, expr.temperature)
        self._append(result.decision, expr.name)
        self._set(expr.name, result.decision, result.meta_info)

    # -- API speculative execution ---------------------------------------------------------------
    def _speculative_gen(self, spec: SamplingSpec) -> tuple[str, dict]:
        """Serve a completion-model gen from the speculated text, calling the API only when the
        speculated text does not reach the gen's stop string."""
        cut = cut_at_stop(self.spec_text, spec.stops)
        meta: dict = {"speculative": True, "api_call": False}
        if cut is None:
            wide = dataclasses.replace(spec, stop=None, max_new_tokens=max(self.spec_tokens, spec.max_new_tokens or 0))
            self.spec_text, meta = self.backend.generate(self._prompt(), wide)
            meta = {**meta, "speculative": True, "api_call": True}
            cut = cut_at_stop(self.spec_text, spec.stops) or (self.spec_text, "")
        value, self.spec_text = cut
        return value, meta

    def _chat_speculative(self, items: tuple[Expr, ...]) -> bool:
        """Run a whole `assistant(... gen ... gen ...)` of a chat model in one API call; False when
        this list is not such a message (it then runs expression by expression)."""
        if not (
            self.spec_tokens
            and self.backend.is_chat_model
            and len(items) > 2
            and not self.stream
            and isinstance(items[0], RoleBegin)
            and items[0].role == "assistant"
            and isinstance(items[-1], RoleEnd)
            and items[-1].role == "assistant"
            and chat_spec_items(items[1:-1])
        ):
            return False
        body = items[1:-1]
        self._execute_one(items[0])
        spec = dataclasses.replace(self.defaults, stop=None, max_new_tokens=self.spec_tokens)
        reply, meta = self.backend.generate(self._prompt(), spec)
        values = match_reply(reply, body, self.defaults)
        if values is None:
            raise ProgramError(
                f"speculative execution: the reply does not follow the assistant message's "
                f"constants {[e.value for e in body if isinstance(e, Constant)]}: {reply!r}"
            )
        found = iter(values)
        for item in body:
            if isinstance(item, Constant):
                self._append(item.value)
            else:
                value = next(found)
                self._append(value, item.name)
                self._set(item.name, convert(value, item.dtype), {**meta, "speculative": True})
        self._execute_one(items[-1])
        return True


def convert(text: str, dtype: Optional[type]) -> Any:
    """A gen's text as `dtype` (int, float, bool, or str: a quoted string, unquoted)."""
    if dtype is None:
        return text
    s = text.strip()
    try:
        if dtype is bool:
            if s not in ("True", "False"):
                raise ValueError(s)
            return s == "True"
        if dtype is str:
            return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s
        return dtype(s)
    except ValueError:
        raise ValueError(f"gen(dtype={dtype.__name__}) produced {text!r}, which is not a {dtype.__name__}") from None


def _describe(expr: Any) -> str:
    if isinstance(expr, Gen):
        return f"gen({expr.name!r})"
    if isinstance(expr, Select):
        return f"select({expr.name!r})"
    if isinstance(expr, Image):
        return "image()"
    if isinstance(expr, _Call):
        return "caching the prefix before fork"
    return type(expr).__name__


def _wrap(expr: Any, exc: BaseException) -> ProgramError:
    err = ProgramError(f"{_describe(expr)} failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def stream_chunks(executor: StreamExecutor, var: Optional[str]) -> Iterator[str]:
    """Incremental text of a streaming state (whole text, or one variable) until it is done."""
    pos = 0
    while True:
        with executor.cond:
            executor.cond.wait_for(lambda: len(_source(executor, var)) > pos or _stream_done(executor, var))  # noqa: B023
            current, done = _source(executor, var), _stream_done(executor, var)
        if len(current) > pos:
            yield current[pos:]
            pos = len(current)
        elif done:
            return


def _source(executor: StreamExecutor, var: Optional[str]) -> str:
    return executor.text if var is None else executor.partial.get(var, "")


def _stream_done(executor: StreamExecutor, var: Optional[str]) -> bool:
    if executor.finished.is_set() or executor.error is not None:
        return True
    return var is not None and var in executor.variables and executor._pending.get(var, 0) == 0
