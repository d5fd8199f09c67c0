"""`Function` (what `@function` makes): `run`, `run_batch`, `bind`."""

from __future__ import annotations

import inspect
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Optional, Union

from radixlm.lang.backend.base import BaseBackend
from radixlm.lang.context import DEFAULT_CONTEXT
from radixlm.lang.interpreter import StreamExecutor
from radixlm.lang.ir import RUN_DEFAULTS, SAMPLING_FIELDS, SamplingSpec
from radixlm.lang.state import ProgramState
from radixlm.lang.tracer import trace_prefix

logger = logging.getLogger(__name__)


class Function:
    """An LLM program: a Python function whose first parameter is the state `s`.

    `run(*args, **kwargs)` takes the program's arguments plus sampling defaults for every gen
    (`temperature`, `max_new_tokens`, `top_p`, ... SGLang's names), `stream` and `backend`."""

    def __init__(self, func: Callable, num_api_spec_tokens: Optional[int] = None, bound: Optional[dict] = None) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bound = dict(bound or {})
        params = list(inspect.signature(func).parameters)
        if not params:
            raise TypeError(f"{func.__name__} must take the program state as its first parameter")
        self.arg_names = params[1:]
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> "Function":
        """A copy with some arguments fixed."""
        return Function(self.func, self.num_api_spec_tokens, {**self.bound, **kwargs})

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)

    def run(self, *args: Any, stream: bool = False, backend: Any = None, **kwargs: Any) -> ProgramState:
        """Run once. Without `stream`, returns when the program has finished and raises its
        first error; with `stream`, returns at once (read `text_iter()`)."""
        arguments, sampling = self._split(args, kwargs)
        state = run_program(self, DEFAULT_CONTEXT.resolve(backend), arguments, _defaults(sampling), stream)
        if not stream and state.error() is not None:
            raise state.error()
        return state

    def run_batch(
        self,
        batch_kwargs: list[dict],
        *,
        backend: Any = None,
        num_threads: Union[int, str] = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
        **sampling: Any,
    ) -> Union[list[ProgramState], Iterator[ProgramState]]:
        """Run once per argument dict, in parallel; errors are kept in each state's `error()`.
        The prefix every run starts with is cached once first, so it is computed once."""
        backend = DEFAULT_CONTEXT.resolve(backend)
        defaults = _defaults(self._split((), sampling, check_missing=False)[1])
        arg_list = [self._split((), dict(kw))[0] for kw in batch_kwargs]
        if arg_list:
            warm_prefix(self, backend, list(arg_list[0]))
        pool = ThreadPoolExecutor(_num_threads(num_threads, len(arg_list)), thread_name_prefix="radixlm-lang-batch")
        futures = [pool.submit(run_program, self, backend, a, defaults, False) for a in arg_list]
        if generator_style:
            return _in_order(futures, pool)
        _wait_with_progress(futures, progress_bar)
        pool.shutdown()
        return [f.result() for f in futures]

    def _split(self, args: tuple, kwargs: dict, check_missing: bool = True) -> tuple[dict, dict]:
        """(program arguments, sampling defaults); unknown names are a TypeError."""
        if len(args) > len(self.arg_names):
            raise TypeError(f"{self.__name__} takes {len(self.arg_names)} arguments, got {len(args)}")
        arguments = {**self.bound, **dict(zip(self.arg_names, args))}
        sampling = {}
        for key, value in kwargs.items():
            if key in self.arg_names:
                arguments[key] = value
            elif key in SAMPLING_FIELDS:
                sampling[key] = value
            else:
                raise TypeError(f"{self.__name__}() got an unexpected argument {key!r}")
        missing = [
            n
            for n in self.arg_names
            if check_missing
            and n not in arguments
            and inspect.signature(self.func).parameters[n].default is inspect.Parameter.empty
        ]
        if missing:
            raise TypeError(f"{self.__name__}() is missing arguments: {missing}")
        return arguments, sampling


def run_program(
    function: Function, backend: BaseBackend, arguments: dict, defaults: SamplingSpec, stream: bool
) -> ProgramState:
    """Run the program body on a fresh state; errors are recorded in the state, never raised.
    With `stream`, the body runs on its own thread and this returns at once."""
    executor = StreamExecutor(backend, defaults, stream=stream, spec_tokens=function.num_api_spec_tokens)
    state = ProgramState(executor)
    if stream:
        threading.Thread(
            target=_run_body, args=(function, state, arguments), daemon=True, name="radixlm-lang-program"
        ).start()
    else:
        _run_body(function, state, arguments)
        executor.sync_all()
    return state


def _run_body(function: Function, state: ProgramState, arguments: dict) -> None:
    try:
        function.func(state, **arguments)
    except BaseException as exc:
        state.executor.record_error(exc)
    finally:
        state.executor.end()


def warm_prefix(function: Function, backend: BaseBackend, arg_names: list[str]) -> None:
    """Cache the text every run starts with (best effort: a failure here shows up in the runs)."""
    try:
        prefix = trace_prefix(function.func, function.bound, backend.chat_template, arg_names)
        if prefix:
            backend.cache_prefix(prefix)
    except Exception as exc:
        logger.debug("run_batch: prefix warm-up skipped: %s", exc)


def _defaults(sampling: dict) -> SamplingSpec:
    if isinstance(sampling.get("stop"), list):
        sampling["stop"] = tuple(sampling["stop"])
    return SamplingSpec(**sampling).merged_over(RUN_DEFAULTS)


def _num_threads(num_threads: Union[int, str], batch: int) -> int:
    if num_threads == "auto":
        num_threads = max(96, (os.cpu_count() or 1) * 16)
    return max(1, min(int(num_threads), batch or 1))


def _wait_with_progress(futures: list[Future], progress_bar: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=len(futures), disable=not progress_bar) as bar:
        for _ in as_completed(futures):
            bar.update(1)


def _in_order(futures: list[Future], pool: ThreadPoolExecutor) -> Iterator[ProgramState]:
    try:
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=False)
