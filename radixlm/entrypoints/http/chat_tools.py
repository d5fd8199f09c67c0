"""How a chat request's `tools` and `tool_choice` shape its prompt, its constraint and the
parsing of its output (`ToolPlan`), and the messages as the chat template receives them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from radixlm.entrypoints.http.errors import APIError
from radixlm.parsers.tool_call.base import SplitFn
from radixlm.parsers.tool_call.registry import CONSTRAINED_SPLIT, SPECIAL_TOKEN_MARKERS, tool_split
from radixlm.parsers.tool_call.schema import tool_calls_schema

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONSTRAINTS = ("regex", "json_schema", "ebnf")


@dataclass(frozen=True)
class ToolPlan:
    """Invariants: `schema` is set exactly when the choice is "required" or named, and then
    `split` reads the constrained JSON array; `split` is None when the output is not parsed
    (no tools, or tool_choice "none"); `template_tools` is what the chat template renders
    (the tools, also under "none")."""

    template_tools: Optional[list[dict]] = None
    schema: Optional[dict] = None
    split: Optional[SplitFn] = None
    tool_names: frozenset = frozenset()
    parallel: bool = True
    keep_special_tokens: bool = False  # the format's markers are special tokens


def plan_tools(body: Any, parser: Optional[str]) -> ToolPlan:
    """The plan for a chat body; `parser` is the served tool-call format (flag or guessed from
    the template). 400 naming the field for invalid tools or a choice that cannot be served."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", "tool_choice")
        return ToolPlan()
    names = _check_tools(body.tools)
    if choice == "none":  # the template still shows the tools (earlier turns may call them)
        return ToolPlan(template_tools=body.tools, tool_names=names)
    plan = dict(template_tools=body.tools, tool_names=names, parallel=body.parallel_tool_calls)
    if choice in (None, "auto"):
        return _auto_plan(body, parser, plan)
    only = None if choice == "required" else _named(choice, names)
    if any(getattr(body, k, None) is not None for k in _CONSTRAINTS) or _has_response_format(body):
        raise APIError(400, "a required or named tool_choice cannot be combined with another constraint", "tool_choice")
    schema = tool_calls_schema(body.tools, only, body.parallel_tool_calls)
    return ToolPlan(**plan, schema=schema, split=CONSTRAINED_SPLIT)


def _auto_plan(body: Any, parser: Optional[str], plan: dict) -> ToolPlan:
    if parser is None:
        raise APIError(
            400,
            "tool_choice 'auto' needs to know the model's tool-call format: start the server with "
            "--tool-call-parser, or use tool_choice 'required' or a named function",
            "tools",
        )
    strict = [t["function"]["name"] for t in body.tools if t["function"].get("strict")]
    if strict:
        raise APIError(
            400,
            f"strict: true (tool {strict[0]!r}) is enforced only with tool_choice 'required' or a named "
            "function; with 'auto' the arguments would not be guaranteed",
            "tools",
        )
    return ToolPlan(**plan, split=tool_split(parser), keep_special_tokens=parser in SPECIAL_TOKEN_MARKERS)


def _check_tools(tools: list[dict]) -> frozenset:
    names: list[str] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict):
            raise APIError(400, "only tools of type 'function' are supported", f"tools[{i}].type")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise APIError(400, "a function name must be 1-64 letters, digits, '_' or '-'", f"tools[{i}].function.name")
        if name in names:
            raise APIError(400, f"tool {name!r} is given twice", f"tools[{i}].function.name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise APIError(400, "parameters must be a JSON schema object", f"tools[{i}].function.parameters")
        names.append(name)
    return frozenset(names)


def _named(choice: Any, names: frozenset) -> str:
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(fn, dict):
        raise APIError(
            400, "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}", "tool_choice"
        )
    if fn.get("name") not in names:
        raise APIError(400, f"tool_choice names {fn.get('name')!r}, which is not among the tools", "tool_choice")
    return fn["name"]


def _has_response_format(body: Any) -> bool:
    fmt = getattr(body, "response_format", None)
    return fmt is not None and fmt.type != "text"


def template_message(role: str, content: str, message: Any) -> dict:
    """A message as chat templates expect it: an assistant's `tool_calls` with arguments as
    objects (templates serialize them), a tool answer with its `tool_call_id` and `name`."""
    out: dict[str, Any] = {"role": role, "content": content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [_template_call(c) for c in message.tool_calls]
    return out


def _template_call(call: dict) -> dict:
    if not isinstance(call.get("function"), dict):
        raise APIError(400, "a tool call needs a function object", "messages")
    fn = dict(call["function"])
    if isinstance(fn.get("arguments"), str):
        try:
            fn["arguments"] = json.loads(fn["arguments"])
        except json.JSONDecodeError:
            raise APIError(400, "a tool call's arguments are not valid JSON", "messages") from None
    return {**call, "function": fn}
