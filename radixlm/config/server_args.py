"""The one frozen configuration tree shared by the Engine, the server and the command-line flags.

Fields use SGLang's server-argument names so that command lines carry over. The
object is validated once in ``__post_init__`` and never mutated afterwards; derive a
changed copy with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

from radixlm.config.bundled import bundled_model_path

DTYPES = ("auto", "float32", "bfloat16", "float16", "half", "float", "bf16", "fp16", "fp32")
LOAD_FORMATS = ("auto", "safetensors", "pt", "gguf", "dummy")
QUANTIZATIONS = ("fp8", "awq", "gptq", "gguf", "none")  # model_loader.weight_format; None: the default
SCHEDULE_POLICIES = ("lpm", "fcfs")
MODEL_IMPLS = ("auto", "radixlm", "transformers")
GRAMMAR_BACKENDS = ("xgrammar", "llguidance", "none")
KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
LOAD_BALANCE_METHODS = ("cache_aware", "round_robin")


@dataclass(frozen=True)
class ServerArgs:
    """Every knob of the runtime. Invariant: all fields are valid after construction."""

    model_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    revision: Optional[str] = None  # Hub branch, tag or commit of a model_path / tokenizer_path given as org/name
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    load_format: str = "auto"
    dtype: str = "auto"
    quantization: Optional[str] = None  # fp8, awq, gptq, gguf (blocks kept), none; unset: weight_format's default
    gguf_cpu_activations: str = "float32"  # gguf on CPU, one-row products: float32 (exact) or int8 (llama.cpp's)
    device: str = "auto"
    context_length: Optional[int] = None
    model_impl: str = "auto"
    served_model_name: Optional[str] = None
    is_embedding: bool = False  # serve an embedding model: /v1/embeddings, /encode, Engine.encode (no generation)
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
    enable_torch_compile: bool = False  # compile decode forwards up to torch_compile_max_bs (CUDA graphs on)
    torch_compile_max_bs: int = 32
    disable_overlap_schedule: bool = False  # finish each batch before launching the next
    kv_cache_dtype: str = "auto"  # auto = the model dtype; fp8 halves the KV pool's bytes per token
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
    tool_call_parser: Optional[str] = None  # format of tool calls in the output (None: guessed from the template)
    reasoning_parser: Optional[str] = None  # splits <think>…</think> into reasoning_content
    log_level: str = "info"
    log_requests: bool = False
    enable_metrics: bool = False
    # Reliability and media access.
    watchdog_timeout: float = 300.0  # seconds one scheduler step may take before the process crashes
    allowed_local_media_path: Optional[str] = None  # directory image files may be read from
    enable_remote_media: bool = False  # fetch http(s) image URLs (off: no request makes us connect out)
    max_images_per_request: int = 16  # vision models: more images in one prompt are refused (400)
    tp_size: int = 1
    nnodes: int = 1  # tensor parallelism across nodes: tp_size ranks, tp_size // nnodes per node
    node_rank: int = 0
    dist_init_addr: Optional[str] = None  # host:port of rank 0's rendezvous (needed when nnodes > 1)
    enable_p2p_check: bool = False  # log which GPU pairs lack peer-to-peer access
    dist_timeout: Optional[int] = None  # seconds a collective may wait for a peer (None: 300)
    ep_size: int = 1  # expert parallelism (MoE models): 1, or tp_size to split the experts across the ranks
    dp_size: int = 1
    dp_rank: int = 0  # this replica's index among dp_size (set per replica by the DP client)
    load_balance_method: str = "cache_aware"
    # Speculative decoding (radixlm.speculative.args: conventions and checks).
    speculative_algorithm: Optional[str] = None  # NGRAM, STANDALONE, EAGLE or EAGLE3
    speculative_draft_model_path: Optional[str] = None  # STANDALONE's draft model / an EAGLE(3) draft head
    speculative_num_steps: Optional[int] = None  # draft tokens per verify step
    speculative_num_draft_tokens: Optional[int] = None  # positions one verify scores (num_steps + 1)
    speculative_eagle_topk: Optional[int] = None  # only 1 (a chain) is supported; > 1: start-up error
    speculative_ngram_min_match_window_size: int = 1
    speculative_ngram_max_match_window_size: int = 4
    # LoRA adapters (radixlm.lora): `name=path` or a bare path each; the pool's slots and rank.
    enable_lora: bool = False  # serve adapters (also implied by lora_paths); needed to load them at run time
    lora_paths: Optional[list[str]] = None
    max_loras_per_batch: int = 8
    max_lora_rank: Optional[int] = None  # default: the largest rank among lora_paths

    def __post_init__(self) -> None:
        if self.model_path is None:
            object.__setattr__(self, "model_path", bundled_model_path())
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("load_format", self.load_format, LOAD_FORMATS)
        if self.quantization is not None:
            _check_choice("quantization", self.quantization, QUANTIZATIONS)
        _check_choice("schedule_policy", self.schedule_policy, SCHEDULE_POLICIES)
        _check_choice("model_impl", self.model_impl, MODEL_IMPLS)
        _check_choice("grammar_backend", self.grammar_backend, GRAMMAR_BACKENDS)
        _check_choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES)
        _check_choice("gguf_cpu_activations", self.gguf_cpu_activations, ("float32", "int8"))
        _check_positive("page_size", self.page_size)
        _check_positive("max_prefill_tokens", self.max_prefill_tokens)
        _check_positive("torch_compile_max_bs", self.torch_compile_max_bs)
        _check_positive("max_images_per_request", self.max_images_per_request)
        for name in ("max_total_tokens", "max_running_requests", "context_length", "num_threads"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if self.chunked_prefill_size is not None and self.chunked_prefill_size <= 0:
            # SGLang uses -1 to mean "no chunking".
            object.__setattr__(self, "chunked_prefill_size", None)
        if self.allowed_local_media_path is not None and not os.path.isdir(self.allowed_local_media_path):
            raise ValueError(f"allowed_local_media_path must be a directory, got {self.allowed_local_media_path!r}")
        if isinstance(self.watchdog_timeout, bool) or not self.watchdog_timeout > 0:
            raise ValueError(f"watchdog_timeout must be a positive number of seconds, got {self.watchdog_timeout!r}")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        _check_tensor_parallel(self)
        _check_parsers(self)
        _check_positive("dp_size", self.dp_size)
        if isinstance(self.dp_rank, bool) or not isinstance(self.dp_rank, int) or self.dp_rank < 0:
            raise ValueError(f"dp_rank must be a non-negative integer, got {self.dp_rank!r}")
        _check_choice("load_balance_method", self.load_balance_method, LOAD_BALANCE_METHODS)
        if self.chunked_prefill_size is not None and self.chunked_prefill_size % self.page_size:
            raise ValueError("chunked_prefill_size must be a multiple of page_size")
        _check_lora(self)
        self.speculative_plan()  # raises on unsupported speculative flags

    def speculative_plan(self) -> Any:
        """The resolved `radixlm.speculative.args.SpecPlan`, or None when speculation is off."""
        from radixlm.speculative.args import check_speculative

        return check_speculative(self)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "ServerArgs":
        """Build from keyword arguments, naming any unknown one (SGLang aliases accepted)."""
        aliases = {
            "tp": "tp_size",
            "dp": "dp_size",
            "ep": "ep_size",
            "mem_fraction": "mem_fraction_static",
            "impl": "model_impl",
            "nccl_init": "dist_init_addr",
        }
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


def _check_tensor_parallel(args: ServerArgs) -> None:
    _check_positive("tp_size", args.tp_size)
    _check_positive("nnodes", args.nnodes)
    if args.tp_size % args.nnodes:
        raise ValueError(f"tp_size ({args.tp_size}) must be a multiple of nnodes ({args.nnodes})")
    if isinstance(args.node_rank, bool) or not isinstance(args.node_rank, int) or not 0 <= args.node_rank < args.nnodes:
        raise ValueError(f"node_rank must be in [0, nnodes={args.nnodes}), got {args.node_rank!r}")
    if args.nnodes > 1 and not args.dist_init_addr:
        raise ValueError("nnodes > 1 needs dist_init_addr (host:port of node 0, reachable from every node)")
    if args.dist_init_addr is not None:
        host, _, port = args.dist_init_addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"dist_init_addr must be host:port, got {args.dist_init_addr!r}")
    if args.dist_timeout is not None:
        _check_positive("dist_timeout", args.dist_timeout)
    _check_positive("ep_size", args.ep_size)
    if args.ep_size not in (1, args.tp_size):
        raise ValueError(
            f"ep_size must be 1 or equal tp_size ({args.tp_size}), got {args.ep_size}: expert parallelism "
            "divides the experts among the tensor-parallel ranks"
        )


def _check_lora(args: ServerArgs) -> None:
    from radixlm.lora.config import parse_lora_paths

    if isinstance(args.lora_paths, str):
        object.__setattr__(args, "lora_paths", [args.lora_paths])
    elif isinstance(args.lora_paths, dict):  # Engine(lora_paths={name: path})
        object.__setattr__(args, "lora_paths", [f"{k}={v}" for k, v in args.lora_paths.items()])
    parse_lora_paths(args.lora_paths)
    _check_positive("max_loras_per_batch", args.max_loras_per_batch)
    if args.max_lora_rank is not None:
        _check_positive("max_lora_rank", args.max_lora_rank)


def _check_parsers(args: ServerArgs) -> None:
    from radixlm.parsers.reasoning import REASONING_PARSERS
    from radixlm.parsers.tool_call.registry import TOOL_CALL_PARSERS

    if args.tool_call_parser is not None:
        _check_choice("tool_call_parser", args.tool_call_parser, tuple(TOOL_CALL_PARSERS))
    if args.reasoning_parser is not None:
        _check_choice("reasoning_parser", args.reasoning_parser, tuple(REASONING_PARSERS))
