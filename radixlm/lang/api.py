"""The primitives programs are written with (SGLang's names and arguments)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from radixlm.lang.context import DEFAULT_CONTEXT
from radixlm.lang.ir import DTYPE_REGEX, Expr, ExprList, Gen, Image, RoleBegin, RoleEnd, SamplingSpec, Select, to_expr
from radixlm.lang.program import Function

_DTYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool}


def function(func: Optional[Callable] = None, *, num_api_spec_tokens: Optional[int] = None) -> Any:
    """`@function` or `@function(num_api_spec_tokens=N)`: make a program of `func(s, ...)`."""
    if func is not None:
        return Function(func, num_api_spec_tokens)
    return lambda f: Function(f, num_api_spec_tokens)


def gen(
    name: Optional[str] = None,
    max_tokens: Optional[int] = None,
    min_tokens: Optional[int] = None,
    stop: Optional[Union[str, list[str]]] = None,
    stop_token_ids: Optional[list[int]] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    min_p: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    presence_penalty: Optional[float] = None,
    ignore_eos: Optional[bool] = None,
    return_logprob: Optional[bool] = None,
    logprob_start_len: Optional[int] = None,
    top_logprobs_num: Optional[int] = None,
    return_text_in_logprobs: Optional[bool] = None,
    dtype: Optional[Union[type, str]] = None,
    choices: Optional[list[str]] = None,
    regex: Optional[str] = None,
    json_schema: Optional[Union[str, dict]] = None,
) -> Expr:
    """Generate text into variable `name`. `choices=[...]` makes it a `select`; `dtype` (int,
    float, bool, str) constrains the text with a regex and converts the value."""
    if choices is not None:
        return select(name, choices, temperature=0.0 if temperature is None else temperature)
    dtype = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype is not None:
        if dtype not in DTYPE_REGEX:
            raise ValueError(f"dtype must be one of int, float, bool, str (got {dtype!r})")
        regex = regex or DTYPE_REGEX[dtype]
    params = SamplingSpec(
        max_new_tokens=max_tokens,
        min_new_tokens=min_tokens,
        stop=tuple(stop) if isinstance(stop, list) else stop,
        stop_token_ids=tuple(stop_token_ids) if stop_token_ids else None,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        ignore_eos=ignore_eos,
        regex=regex,
        json_schema=json_schema,
        return_logprob=return_logprob,
        logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs,
    )
    return Gen(name, params, dtype)


def gen_int(name: Optional[str] = None, **kwargs: Any) -> Expr:
    """`gen(name, dtype=int, ...)`."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: Optional[str] = None, **kwargs: Any) -> Expr:
    """`gen(name, dtype=str, ...)`: a double-quoted string; the value is unquoted."""
    return gen(name, dtype=str, **kwargs)


def select(name: Optional[str] = None, choices: Optional[list[str]] = None, temperature: float = 0.0) -> Select:
    """Append whichever of `choices` the model scores highest (mean token logprob)."""
    if not choices or not all(isinstance(c, str) for c in choices):
        raise ValueError("select needs a non-empty list of string choices")
    return Select(name, tuple(choices), temperature)


def image(source: Union[str, bytes]) -> Image:
    """An image (path, URL or bytes) in the current message; needs a multimodal backend."""
    return Image(source)


def _role(role: str, expr: Any) -> ExprList:
    inner = () if expr is None else (to_expr(expr),)
    return ExprList((RoleBegin(role), *inner, RoleEnd(role)))


def system(expr: Any = None) -> ExprList:
    """A system message holding `expr` (text, gen, select, image, or their sum)."""
    return _role("system", expr)


def user(expr: Any = None) -> ExprList:
    """A user message holding `expr` (text, gen, select, image, or their sum)."""
    return _role("user", expr)


def assistant(expr: Any = None) -> ExprList:
    """An assistant message holding `expr` (text, gen, select, image, or their sum)."""
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    """Open a system message (what is added until it closes is its content)."""
    return RoleBegin("system")


def system_end() -> RoleEnd:
    """Close the open system message."""
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    """Open a user message (what is added until it closes is its content)."""
    return RoleBegin("user")


def user_end() -> RoleEnd:
    """Close the open user message."""
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    """Open an assistant message (what is added until it closes is its content)."""
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    """Close the open assistant message."""
    return RoleEnd("assistant")


def set_default_backend(backend: Any) -> None:
    """The backend `run` / `run_batch` use when given none (a backend or a `radixlm.Engine`)."""
    DEFAULT_CONTEXT.set_default_backend(backend)


def get_default_backend() -> Any:
    """The backend `set_default_backend` installed (None if none)."""
    return DEFAULT_CONTEXT.get_default_backend()


def flush_cache(backend: Any = None) -> None:
    """Drop the backend's cached prefixes."""
    DEFAULT_CONTEXT.resolve(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict:
    """The backend's server information (`/get_server_info` for a RuntimeEndpoint)."""
    return DEFAULT_CONTEXT.resolve(backend).get_server_info()
