"""No silent drops: every request field a route does not implement is a 400 naming it.

Each body model declares what the route implements (pydantic fields) and keeps any other key
(`extra="allow"`). `check_fields` then refuses every undeclared key except the few that are
no-ops in OpenAI's own API (listed here and in the README as accepted and ignored), and the
declared fields whose unimplemented values are refused by value (`suffix`, `best_of` > 1).
An undeclared field sent as null, "" or `false` (an opt-in flag left off) asks for nothing and
counts as absent."""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel

from radixlm.entrypoints.http.errors import APIError

# OpenAI fields that only matter to OpenAI's own bookkeeping (abuse monitoring, billing tier,
# cache routing, stored-completion labels): accepted and ignored, as documented in the README.
OPENAI_NOOPS = frozenset({"user", "safety_identifier", "prompt_cache_key", "metadata", "service_tier"})
# Keys an assistant message echoed back by the official client carries as null.
MESSAGE_NULLS = frozenset({"refusal", "audio", "function_call", "annotations"})

# declared field -> (the value is implemented?, why not)
ValueRule = tuple[Callable[[Any], bool], str]
VALUE_RULES: dict[str, dict[str, ValueRule]] = {
    "completions": {
        "suffix": (lambda v: v is None, "suffix (insertion) is not supported"),
        "best_of": (lambda v: v is None or v == 1, "best_of > 1 is not supported; use n"),
    },
    "chat": {
        "store": (lambda v: v is None or v is False, "store=true is not supported: completions are not stored"),
        "modalities": (lambda v: v is None or list(v) == ["text"], "only the text modality is supported"),
    },
    "generate": {},
    "embeddings": {
        "encoding_format": (lambda v: v in ("float", "base64"), "only float and base64 are supported"),
    },
    "encode": {},
}


# Undeclared flags whose default is on, so that `false` would ask for something.
DEFAULT_ON = frozenset({"stream_reasoning", "spaces_between_special_tokens"})


def asks_nothing(name: str, value: Any) -> bool:
    """null, an empty string, or `false` for an opt-in flag: the field asks for nothing (SGLang's
    own clients send e.g. `"return_routed_experts": false`, `"lora_path": null`)."""
    return value is None or value == "" or (value is False and name not in DEFAULT_ON)


def check_fields(body: BaseModel, route: str, ignored: frozenset = OPENAI_NOOPS) -> None:
    """400 for the first field of `body` that `route` does not implement (see the module doc)."""
    for name, value in (body.model_extra or {}).items():
        if not asks_nothing(name, value) and name not in ignored and name not in VALUE_RULES[route]:
            raise APIError(400, f"field {name!r} is not supported by this server", name)
    for name, (ok, why) in VALUE_RULES[route].items():
        value = getattr(body, name, None) if name in type(body).model_fields else (body.model_extra or {}).get(name)
        if not ok(value):
            raise APIError(400, f"{name}: {why}", name)


def check_message_fields(messages: list[BaseModel]) -> None:
    """400 for an undeclared, non-null key of any chat message (named `messages[i].key`)."""
    for i, message in enumerate(messages):
        for name, value in (message.model_extra or {}).items():
            if value is not None or name not in MESSAGE_NULLS:
                param = f"messages[{i}].{name}"
                raise APIError(400, f"field {param!r} is not supported by this server", param)
