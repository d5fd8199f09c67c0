"""The one check a request passes before it is sent to the scheduler.

The scheduler trusts every TokenizedGenerateReq it receives: it does not check prompts again.
So every sender (the Engine, for one scheduler or several data-parallel replicas) runs
`validate_request` once per prompt, against the limits the scheduler reported at start-up.
Pure: no I/O, no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from radixlm.sampling.sampling_params import SamplingParams


@dataclass(frozen=True)
class RuntimeLimits:
    """What bounds one request: token ids lie in [0, vocab_size); a prompt is shorter than
    context_length; prompt plus output fit the KV pool's kv_capacity tokens."""

    vocab_size: int
    context_length: int
    kv_capacity: int

    @classmethod
    def from_info(cls, info: dict) -> "RuntimeLimits":
        """From the scheduler's start-up info (`SchedulerReady.info`)."""
        return cls(info["vocab_size"], info["context_length"], info["max_total_num_tokens"])


def validate_request(input_ids: Sequence[int], params: SamplingParams, limits: RuntimeLimits) -> None:
    """Raise ValueError naming the problem unless `params` are valid and a request for
    `input_ids` could run to completion alone on an otherwise empty runtime."""
    params.validate(limits.vocab_size)
    _check_prompt(input_ids, limits)
    _check_fits(len(input_ids), params.max_new_tokens, limits)


def _check_prompt(ids: Sequence[int], limits: RuntimeLimits) -> None:
    if not ids:
        raise ValueError("the prompt is empty")
    vocab = limits.vocab_size
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        raise ValueError(f"input_ids must be integers in [0, {vocab})")
    if len(ids) >= limits.context_length:
        raise ValueError(f"the prompt has {len(ids)} tokens; the context length is {limits.context_length}")
    if len(ids) + 1 > limits.kv_capacity:
        raise ValueError(f"the prompt has {len(ids)} tokens, more than the KV pool holds ({limits.kv_capacity})")


def _check_fits(prompt_len: int, max_new_tokens: int, limits: RuntimeLimits) -> None:
    """A request that alone would outgrow the KV pool can never finish: refuse it now
    (retraction only helps requests that fit the pool by themselves)."""
    need = prompt_len + min(max_new_tokens, limits.context_length - prompt_len)
    pool = limits.kv_capacity
    if need > pool:
        raise ValueError(
            f"the prompt ({prompt_len} tokens) plus max_new_tokens ({max_new_tokens}) needs "
            f"{need} KV slots, more than the KV pool holds ({pool}): lower max_new_tokens "
            f"to at most {pool - prompt_len}"
        )
