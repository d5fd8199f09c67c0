"""The one frozen configuration tree shared by the Engine and (later) the CLI.

Fields use SGLang's server-argument names so that command lines carry over. The
object is validated once in ``__post_init__`` and never mutated afterwards; derive a
changed copy with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from radixlm.bundled import bundled_model_path

DTYPES = ("auto", "float32", "bfloat16", "float16", "half", "float", "bf16", "fp16", "fp32")
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
SCHEDULE_POLICIES = ("lpm", "fcfs")
MODEL_IMPLS = ("auto", "radixlm", "transformers")
GRAMMAR_BACKENDS = ("xgrammar", "llguidance", "none")


@dataclass(frozen=True)
class ServerArgs:
    """Every knob of the runtime. Invariant: all fields are valid after construction."""

    model_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    load_format: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    context_length: Optional[int] = None
    model_impl: str = "auto"
    served_model_name: Optional[str] = None
    random_seed: int = 0

    # Memory and scheduling.
    max_total_tokens: Optional[int] = None
    mem_fraction_static: float = 0.85
    page_size: int = 1
    max_running_requests: Optional[int] = None
    max_prefill_tokens: int = 16384
    chunked_prefill_size: Optional[int] = None
    schedule_policy: str = "lpm"
    disable_radix_cache: bool = False
    attention_backend: str = "auto"
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int = 256
    num_threads: Optional[int] = None

    # Structured output (regex / JSON schema / EBNF constraints).
    grammar_backend: str = "xgrammar"
    disable_jump_forward: bool = False

    # Server (used by the HTTP front).
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: Optional[str] = None
    max_payload_size: int = 32 * 1024 * 1024
    chat_template: Optional[str] = None
    log_level: str = "info"
    log_requests: bool = False
    enable_metrics: bool = False
    tp_size: int = 1
    dp_size: int = 1

    def __post_init__(self) -> None:
        if self.model_path is None:
            object.__setattr__(self, "model_path", bundled_model_path())
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("load_format", self.load_format, LOAD_FORMATS)
        _check_choice("schedule_policy", self.schedule_policy, SCHEDULE_POLICIES)
        _check_choice("model_impl", self.model_impl, MODEL_IMPLS)
        _check_choice("grammar_backend", self.grammar_backend, GRAMMAR_BACKENDS)
        _check_positive("page_size", self.page_size)
        _check_positive("max_prefill_tokens", self.max_prefill_tokens)
        for name in ("max_total_tokens", "max_running_requests", "context_length", "num_threads"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if self.chunked_prefill_size is not None and self.chunked_prefill_size <= 0:
            # SGLang uses -1 to mean "no chunking".
            object.__setattr__(self, "chunked_prefill_size", None)
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if self.tp_size != 1:
            raise ValueError("tp_size > 1 is not supported yet (tensor parallelism: issue 9)")
        if self.dp_size != 1:
            raise ValueError("dp_size > 1 is not supported yet (data parallelism: issue 9)")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size % self.page_size:
            raise ValueError("chunked_prefill_size must be a multiple of page_size")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "ServerArgs":
        """Build from keyword arguments, naming any unknown one (SGLang aliases accepted)."""
        aliases = {"tp": "tp_size", "dp": "dp_size", "mem_fraction": "mem_fraction_static"}
        fields = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in kwargs.items():
            key = aliases.get(key, key)
            if key not in fields:
                raise TypeError(f"unknown server argument {key!r}")
            clean[key] = value
        return cls(**clean)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
