"""How `Engine` reads its arguments: its `ServerArgs` from the constructor's arguments, the
embedding pooling they select, and a batched call's per-prompt arguments (one entry per prompt
or one value for all, and the seeds of an n>1 request's siblings)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from radixlm.config.server_args import ServerArgs
from radixlm.model_loader.pooling_config import PoolingConfig, check_embedding_architecture, read_pooling_config
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.sampling.seeding import derive_step_seed


def server_args_of(model_path: Optional[str], server_args: Optional[ServerArgs], kwargs: dict) -> ServerArgs:
    """The engine's config: `server_args` as given, or built from `model_path` and `kwargs`."""
    if server_args is None:
        return ServerArgs.from_kwargs(model_path=model_path, **kwargs)
    if model_path is not None or kwargs:
        raise TypeError("pass either server_args or model_path / keyword server arguments, not both")
    if not isinstance(server_args, ServerArgs):
        raise TypeError(f"server_args must be a ServerArgs, got {type(server_args).__name__}")
    return server_args


def embedding_pooling(args: ServerArgs, model_config: Any) -> Optional[PoolingConfig]:
    """The served model's pooling with is_embedding (ValueError for a model that cannot embed), else None."""
    if not args.is_embedding:
        return None
    check_embedding_architecture(model_config, args.model_impl)
    return read_pooling_config(args.model_path, model_config)


# Sibling seeds reuse the step-seed mix on "step numbers" far beyond any real step count.
_SIBLING_SEED_DOMAIN = 1 << 62


def sibling_params(params: SamplingParams, j: int) -> SamplingParams:
    """Params of sample j of an n>1 request. Sample 0 keeps the seed (so it equals the n=1
    result); the others get distinct seeds derived from it, so seeded samples differ from
    each other yet stay reproducible."""
    if params.seed is None or j == 0:
        return params
    return dataclasses.replace(params, seed=derive_step_seed(params.seed, _SIBLING_SEED_DOMAIN + j))


def check_list_lengths(count: int, **per_prompt: Any) -> None:
    """A per-prompt argument given as a list needs one entry per prompt."""
    for name, value in per_prompt.items():
        if isinstance(value, list) and len(value) != count:
            raise ValueError(f"got {len(value)} values of {name} for {count} prompts")


def pick(value: Any, i: int, default: Any) -> Any:
    """The i-th prompt's value of a per-prompt argument: its list entry, else the one value, else `default`."""
    if isinstance(value, list):
        return value[i]
    return default if value is None else value
