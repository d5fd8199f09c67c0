"""Pieces shared by /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Optional

from radixlm.entrypoints.http.errors import APIError
from radixlm.entrypoints.http.protocol import _SamplingExtras
from radixlm.entrypoints.http.state import ServerState
from radixlm.entrypoints.request_output import OutputAccumulator
from radixlm.ipc.finish import FinishStop


def check_model(state: ServerState, name: str) -> Optional[str]:
    """The LoRA adapter `name` selects: None for the served model (SGLang also accepts "default"),
    the adapter for an adapter's name or "<model>:<adapter>". Anything else is a 400 naming it,
    as an OpenAI client expects."""
    bases = (state.model_name, "default", "", state.engine.server_args.model_path)
    if name in bases:
        return None
    adapters = state.engine.lora_adapters or frozenset()
    if name in adapters:
        return name
    base, sep, adapter = name.rpartition(":")
    if sep and base in bases:
        if adapter not in adapters:
            raise APIError(400, f"LoRA adapter {adapter!r} is not loaded (loaded: {sorted(adapters)})", "model")
        return adapter
    raise APIError(400, f"model {name!r} is not served here; available: {state.model_name!r}", "model")


def lora_of(state: ServerState, body: Any, from_model: Optional[str]) -> Optional[str]:
    """The adapter of an OpenAI body: its `lora_path` or the one its `model` names (400 if they differ)."""
    given = getattr(body, "lora_path", None) or None
    state.check_lora(given)
    if given is not None and from_model is not None and given != from_model:
        raise APIError(400, f"lora_path {given!r} and model {body.model!r} name different adapters", "lora_path")
    return given or from_model


def sampling_params(body: _SamplingExtras, max_tokens: Optional[int], context_room: int) -> dict:
    """OpenAI fields (+ SGLang extras) to radixlm sampling params; a prompt filling the context,
    or max_tokens past it, is a 400."""
    if context_room < 1:
        raise APIError(
            400,
            f"the prompt is {1 - context_room} token(s) too long for the context "
            "(which must also hold at least one generated token)",
            "prompt",
        )
    if max_tokens is not None and max_tokens > context_room:
        raise APIError(
            400,
            f"max_tokens={max_tokens} does not fit: the prompt leaves room for "
            f"{context_room} tokens in the context and KV pool",
            "max_tokens",
        )
    params: dict[str, Any] = {
        "max_new_tokens": max_tokens if max_tokens is not None else context_room,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "min_new_tokens": body.min_tokens,
        "ignore_eos": body.ignore_eos,
        "n": body.n,
        "skip_special_tokens": body.skip_special_tokens,
        "no_stop_trim": body.no_stop_trim,
    }
    if body.json_schema_max_tokens_close:
        params["json_schema_max_tokens_close"] = True
    optional = {
        "stop": body.stop,
        "stop_token_ids": body.stop_token_ids,
        "seed": body.seed,
        "logit_bias": body.logit_bias,
        "regex": body.regex,
        "ebnf": body.ebnf,
        "json_schema": _schema_text(body.json_schema),
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def _schema_text(schema: Any) -> Optional[str]:
    if schema is None or isinstance(schema, str):
        return schema
    return json.dumps(schema)


def finish_reason(acc: OutputAccumulator) -> Optional[str]:
    return acc.finish.kind if acc.finish is not None else None


def matched_stop(acc: OutputAccumulator) -> Any:
    return acc.finish.matched if isinstance(acc.finish, FinishStop) else None


def usage(accs: list[OutputAccumulator], n: int) -> dict:
    """Exact counts: each prompt once (its n samples are consecutive and share it), every
    completion token; cached tokens are the best hit among a prompt's samples."""
    groups = [accs[i : i + n] for i in range(0, len(accs), n)]
    prompt_tokens = sum(g[0].meta.get("prompt_tokens", 0) for g in groups)
    completion = sum(a.meta.get("completion_tokens", 0) for a in accs)
    cached = sum(max(a.meta.get("cached_tokens", 0) for a in g) for g in groups)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def token_text(state: ServerState, token: int) -> str:
    return state.engine.tokenizer.decode([token])
