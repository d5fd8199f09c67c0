"""The messages exchanged between the front (Engine / HTTP) and the scheduler process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from radixlm.ipc.finish import FinishReason
from radixlm.sampling.sampling_params import SamplingParams


@dataclass
class TokenizedGenerateReq:
    """One sequence to generate. Requests of one `n>1` call share `prefix_group` so the
    scheduler prefills their common prompt once."""

    rid: str
    input_ids: list[int]
    params: SamplingParams
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    prefix_group: Optional[str] = None
    embed_dimensions: Optional[int] = None  # embedding requests: Matryoshka truncation of the vector
    images: Optional[list[Any]] = None  # ImageInputs (radixlm.multimodal.inputs) of a VLM prompt
    lora_name: Optional[str] = None  # the LoRA adapter to generate with (None: the base model)


@dataclass
class AbortReq:
    rid: str


@dataclass
class RpcReq:
    """A control call (`flush_cache`, `get_info`, `check_leak`, `shutdown`, `load_lora_adapter`,
    `unload_lora_adapter`) with its keyword arguments, answered by one RpcOutput."""

    method: str
    call_id: int = 0
    kwargs: dict = field(default_factory=dict)


@dataclass
class RpcOutput:
    call_id: int
    result: Any = None
    error: Optional[str] = None


@dataclass
class ReqOutput:
    """New output of one request since its last message. `finish_reason` set means final;
    `embedding` is set on the final message of an embedding request."""

    rid: str
    new_ids: list[int]
    text_delta: str
    finish_reason: Optional[FinishReason]
    meta: dict = field(default_factory=dict)
    embedding: Optional[list[float]] = None


@dataclass
class BatchOutput:
    outputs: list[ReqOutput]


# -- the scheduler process's reports about itself -------------------------------------------
# The first message on the scheduler -> front pipe is SchedulerReady or SchedulerFailed;
# after SchedulerReady come BatchOutput / RpcOutput, and SchedulerCrashed if the loop dies.


@dataclass
class SchedulerStartup:
    """What the scheduler process needs that the front has already loaded. The first message on
    the request pipe, sent right after the process starts rather than as its arguments: a spawned
    child receives its arguments while it bootstraps, and one that dies then (a script without
    the `__main__` guard) would leave the parent blocked writing a large pickle (a tokenizer)
    into a pipe nobody reads; a message on our own pipe fails with BrokenPipeError instead."""

    tokenizer: Any
    eos_ids: set[int]
    model_config: Any


@dataclass
class SchedulerReady:
    """The scheduler is built and serving. `info` is its `get_info` answer at start-up
    (`vocab_size`, `context_length`, `max_total_num_tokens` bind every request)."""

    info: dict


@dataclass
class SchedulerFailed:
    """Building the scheduler raised; the process exits after sending this."""

    traceback: str


@dataclass
class SchedulerCrashed:
    """The serving loop raised; the process exits after sending this."""

    traceback: str
