"""Owns the model, the KV pool and the attention backend; runs one ForwardBatch to logits.

Start-up order: load the model (its attention backend bound to a scratch KV pool), size the KV
pool (on CUDA from the memory measured after a warm-up forward, see `executor.memory_profile`),
bind the backend to it, then capture CUDA graphs."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import torch

from radixlm.attention.registry import create_attention_backend
from radixlm.config.server_args import ServerArgs
from radixlm.distributed.batch_sync import BatchSender
from radixlm.distributed.group import TPGroup
from radixlm.executor.memory_profile import kv_pool_tokens as kv_pool_tokens  # the pool-sizing rule, re-exported
from radixlm.executor.memory_profile import (
    measure_after_warmup,
    pool_tokens_from_profile,
    warmup_batch,
    warmup_shape,
)
from radixlm.forward.batch import ForwardBatch, logit_hidden
from radixlm.layers.linear import AttentionHeads
from radixlm.mem_cache.kv_pool import KVPool, ReqToTokenPool, kv_cache_dtype
from radixlm.model_loader.loader import build_model, kv_heads_of, load_model_config, residual_dtype, resolve_dtype
from radixlm.model_loader.weight_format import choose_quantization
from radixlm.models.llama import head_dim_of

logger = logging.getLogger(__name__)

CPU_KV_BUDGET_BYTES = 2 << 30  # default KV pool on CPU when max_total_tokens is not given
DEFAULT_MAX_RUNNING = 256
HEARTBEAT_S = 2.0  # idle tensor-parallel leader -> followers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelRunner:
    """Invariant: once constructed, the pool, backend and model live as long as the runner and
    the backend reads and writes `pool`.

    With tensor parallelism every rank has its own runner over its shard of the model; `tp`
    is this rank's group and `device` its device (None: resolved from `args.device`)."""

    heartbeat_s: float | None = None  # how often an idle scheduler calls `heartbeat` (None: never)

    def __init__(
        self,
        args: ServerArgs,
        model_config: Any | None = None,
        tp: TPGroup | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.args = args
        self.tp = tp or TPGroup.single()
        self.device = device or resolve_device(args.device)
        if self.device.type == "cpu" and (args.num_threads or self.tp.size > 1):
            # Ranks of one node share its cores: split them rather than oversubscribe.
            torch.set_num_threads(args.num_threads or max(1, (os.cpu_count() or 1) // self.tp.size))
        torch.manual_seed(args.random_seed)
        self.config = model_config or load_model_config(args.model_path, args.trust_remote_code)
        self.weight_quantization = choose_quantization(args, self.config, self.device)  # build_model's
        self.dtype = resolve_dtype(args.dtype, self.config, self.device, self.weight_quantization)
        self.vocab_size = self.config.vocab_size
        self.context_len = args.context_length or self.config.max_position_embeddings
        self.max_running = args.max_running_requests or DEFAULT_MAX_RUNNING
        # What a forward returns, chosen once (followers build the same, so every rank agrees):
        # logits, or with --is-embedding every row's final-norm hidden state (no LM head).
        self.output = _hidden_states if args.is_embedding else self._logits
        self.req_to_token_pool = ReqToTokenPool(self.max_running + 1, self.context_len + args.page_size, self.device)
        self.warmup_prefill = self._warmup_prefill()
        scratch = self._new_pool(self._scratch_tokens())
        # a speculative verify may run as decode rows, 1 + drafts per request (speculative/verify_batch.py)
        spec = args.speculative_plan()
        rows = 1 if spec is None else spec.num_drafts + 1
        self.backend = create_attention_backend(args.attention_backend, scratch, self.device, rows)
        self.model = self._load_model()
        self.lora = self._lora_manager()  # None unless LoRA adapters are served
        self._prepare = self.lora.prepare if self.lora is not None else _no_prepare
        self._capture: Callable[[torch.Tensor, ForwardBatch], None] = _no_capture  # see capture_hidden
        plan = getattr(self.model, "quant_plan", None)
        self.quantization = None if plan is None else plan.info  # what get_server_info reports
        if plan is not None and args.enable_torch_compile:
            raise ValueError(
                f"--enable-torch-compile with quantization {plan.name!r} is not supported yet: the quantized "
                "matmuls launch Triton kernels torch.compile cannot trace; drop one of the two"
            )
        self.weight_bytes = weight_bytes(self.model)
        self.pool = self._new_pool(self._pool_tokens(scratch))
        self.backend.bind_pool(self.pool)
        self.graphs = self._maybe_capture_graphs()

    def _load_model(self) -> Any:
        start = time.perf_counter()
        model = build_model(
            self.config,
            self.backend,
            self.args.model_path,
            self.args.load_format,
            self.dtype,
            self.device,
            self.args.random_seed,
            self.args.model_impl,
            self.args.trust_remote_code,
            self.context_len,
            self.tp,
            self.args.ep_size,
            self.weight_quantization,
            self.args.gguf_cpu_activations,
            residual_dtype(self.dtype, self.device),
        )
        logger.info(
            "model loaded in %.1f s (%s, %s, %.2f GiB of weights)",
            time.perf_counter() - start,
            self.dtype,
            self.device,
            weight_bytes(model) / 2**30,
        )
        return model

    def _lora_manager(self) -> Any:
        """Wraps the model's projections for LoRA (radixlm.lora) when adapters are served."""
        if not (self.args.lora_paths or self.args.enable_lora):
            return None
        from radixlm.lora.manager import build_lora_manager

        rows = max(self.max_running, self._graph_max_bs())  # a graphed verify has a row per draft token
        return build_lora_manager(self.args, self.model, self.config, rows, self.device)

    def _maybe_capture_graphs(self) -> Any:
        """CUDA graphs for decode when on CUDA with a graph-safe backend and not disabled."""
        if not self._uses_cuda_graphs() or not _is_triton(self.backend):
            if self.args.enable_torch_compile:
                # On CPU the traced forward breaks at every layer's attention call and was slower than
                # eager on the bundled model (benchmarks/cpu_bench.py); refused rather than ignored.
                raise ValueError(
                    "--enable-torch-compile applies to CUDA-graph decode only (a CUDA device with CUDA graphs, "
                    "the triton attention backend and no EAGLE drafter); drop it here"
                )
            return None
        from radixlm.executor.cuda_graph_runner import CudaGraphRunner

        max_bs = self._graph_max_bs()
        compiled = None
        if self.args.enable_torch_compile:
            from radixlm.executor.model_compile import compile_forward

            compiled = compile_forward(self.model, self.backend)
        runner = CudaGraphRunner(
            self.model,
            self.backend,
            self.req_to_token_pool.table,
            max_bs,
            self.device,
            compiled,
            self.args.torch_compile_max_bs,
            self.lora,  # graphs with LoRA launches read each replay's adapter slots from static buffers
        )
        logger.info("CUDA graph capture took %.1f s", runner.capture_seconds)
        return runner

    def _kv_shape(self) -> tuple[int, int, int, torch.dtype]:
        """(layers, local KV heads, head dim, storage dtype) of this rank's KV pool."""
        kv_dtype = kv_cache_dtype(self.args.kv_cache_dtype, self.dtype)
        return self.config.num_hidden_layers, self._local_kv_heads(), head_dim_of(self.config), kv_dtype

    def _bytes_per_token(self) -> int:
        layers, kv_heads, head_dim, kv_dtype = self._kv_shape()
        return 2 * layers * kv_heads * head_dim * torch.tensor([], dtype=kv_dtype).element_size()

    def _new_pool(self, size: int) -> KVPool:
        return KVPool(size, self.args.page_size, *self._kv_shape(), self.device)

    def _warmup_prefill(self) -> tuple[int, int] | None:
        """(requests, tokens each) of the warm-up forward; None when the pool is not sized from
        measured memory (CPU, or `--max-total-tokens` given)."""
        if self.device.type != "cuda" or self.args.max_total_tokens:
            return None
        args = self.args
        return warmup_shape(args.max_prefill_tokens, args.chunked_prefill_size, self.context_len, self.max_running)

    def _scratch_tokens(self) -> int:
        """Slots of the pool the model is built with: enough for the warm-up forward, else two pages."""
        page = self.args.page_size
        if self.warmup_prefill is None:
            return 2 * page
        requests, length = self.warmup_prefill
        return -(-requests * length // page) * page

    def _pool_tokens(self, scratch: KVPool) -> int:
        """The KV pool's size in tokens (whole pages; the same on every tensor-parallel rank)."""
        per_token = self._bytes_per_token()
        size = self.args.max_total_tokens or self._default_pool_tokens(per_token, scratch)
        size = self.tp.min_int(size, self.device)  # rank 0 allocates slots every rank must hold
        size -= size % self.args.page_size
        if size < self.args.page_size * 2:
            raise ValueError(f"KV pool of {size} tokens is too small")
        logger.info("KV pool: %d tokens (%.2f GiB)", size, size * per_token / 2**30)
        return size

    def _local_kv_heads(self) -> int:
        if self.tp.size == 1:
            return kv_heads_of(self.config)
        cfg = self.config
        return AttentionHeads.split(cfg.num_attention_heads, kv_heads_of(cfg), self.tp).num_kv_heads

    def _uses_cuda_graphs(self) -> bool:
        """Decode will be captured in CUDA graphs (the Triton backend, chosen or by `auto`, on CUDA)."""
        return (
            self.device.type == "cuda"
            and not self.args.disable_cuda_graph
            and self.args.attention_backend in ("auto", "triton")
            and not self.args.is_embedding  # prefill only: nothing to capture
            and self._graph_max_bs() > 0  # 0: every forward runs eagerly (an EAGLE drafter reads them)
        )

    def _graph_max_bs(self) -> int:
        return decode_graph_max_bs(self.args.cuda_graph_max_bs, self.max_running, self.args.speculative_plan())

    def _default_pool_tokens(self, per_token: int, scratch: KVPool) -> int:
        """On CPU a fixed budget; on CUDA what the memory measured after the warm-up leaves."""
        if self.warmup_prefill is None:
            return int(min(CPU_KV_BUDGET_BYTES // per_token, 64 * self.context_len))
        profile = measure_after_warmup(self.device, self._warmup_forward, lambda: _release(scratch))
        graphs = 0
        if self._uses_cuda_graphs():
            from radixlm.executor.cuda_graph_runner import logits_buffer_bytes

            graphs = logits_buffer_bytes(self._graph_max_bs(), self.vocab_size)
        logger.info(
            "KV pool budget: %.0f%% of %.1f GiB, less %.2f GiB in use, %.2f GiB of activations at the "
            "warm-up prefill (%d x %d tokens), %.2f GiB of CUDA-graph logits",
            100 * self.args.mem_fraction_static,
            profile.total / 2**30,
            (profile.total - profile.free) / 2**30,
            profile.activation_peak / 2**30,
            *self.warmup_prefill,
            graphs / 2**30,
        )
        return pool_tokens_from_profile(profile, self.args.mem_fraction_static, graphs, per_token, self.args.page_size)

    @torch.inference_mode()
    def _warmup_forward(self) -> None:
        """One eager forward of the largest prefill on the scratch pool; its table rows are cleared after."""
        requests, length = self.warmup_prefill
        table = self.req_to_token_pool.table
        self._run_eager(warmup_batch(table, requests, length, self.device))
        table[:requests, :length] = 0

    def _run_eager(self, batch: ForwardBatch) -> torch.Tensor:
        self._prepare(batch)
        self.backend.init_forward_metadata(batch)
        hidden = self.model(batch.input_ids, batch.positions, batch)
        self._capture(hidden, batch)
        return self.output(hidden, batch)

    def capture_hidden(self, sink: Callable[[torch.Tensor, ForwardBatch], None]) -> None:
        """From now on every forward hands `sink` the model's final (post-norm) hidden states of
        all its rows [T, H] with its batch (EAGLE drafting reads them). Requires a runner without
        CUDA graphs (a replay would skip the sink): `decode_graph_max_bs` plans none for a
        speculative plan that reads hidden states."""
        if self.graphs is not None:
            raise RuntimeError(
                "capture_hidden on a runner with CUDA graphs: its args must name the EAGLE algorithm, "
                "so that no graph is captured"
            )
        self._capture = sink

    def _logits(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        return self.model.compute_logits(logit_hidden(hidden, batch))

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Run the batch; returns float32 logits for the rows named by `batch.logit_indices`
        (with `--is-embedding`: the final-norm hidden states of every row, in the model dtype)."""
        if self.graphs is not None and self.graphs.can_run(batch):
            self._prepare(batch)
            return self.graphs.replay(batch)
        return self._run_eager(batch)

    def heartbeat(self) -> None:
        """Called by an idle scheduler every `heartbeat_s` seconds (never at tp 1)."""

    def close(self) -> None:
        """Release what the runner shares with other processes (nothing at tp 1)."""


def decode_graph_max_bs(cuda_graph_max_bs: int, max_running: int, plan: Any) -> int:
    """The largest decode batch the CUDA graphs capture (0: none), the largest one replayed: the
    running requests, times 1 + the draft tokens when speculative verify steps run as decodes of
    one row per token (`plan`, a `SpecPlan` or None); at most `cuda_graph_max_bs`. 0 when the
    plan's drafter reads the target's hidden states (EAGLE): no forward replays a graph then."""
    if plan is not None and plan.reads_hidden_states:
        return 0
    rows_per_request = 1 + (plan.num_drafts if plan is not None else 0)
    return min(cuda_graph_max_bs, max_running * rows_per_request)


def weight_bytes(model: Any) -> int:
    """Bytes of this rank's parameters as stored (quantized weights count at their packed size)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _no_prepare(batch: ForwardBatch) -> None:
    """The per-forward LoRA step of a runner without adapters."""


def _no_capture(hidden: torch.Tensor, batch: ForwardBatch) -> None:
    """The hidden-state sink of a runner nobody reads hidden states from."""


def _hidden_states(hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
    """Embedding mode's output: the model's final-norm hidden states [T, H], every row."""
    return hidden


def _is_triton(backend: Any) -> bool:
    """Imports the Triton backend only when asked (on CUDA): a CPU process never loads Triton."""
    from radixlm.attention.triton_backend import TritonBackend

    return isinstance(backend, TritonBackend)


def _release(scratch: KVPool) -> None:
    """Free the scratch pool's buffers now (the backend keeps the emptied object until it is
    bound to the real pool), so the measured free memory does not count them."""
    scratch.k_buffers.clear()
    scratch.v_buffers.clear()


class LeaderRunner(ModelRunner):
    """Rank 0 of a tensor-parallel group: sends every batch to the followers before running
    its own shard, keeps them alive with heartbeats while idle, and stops them on `close`."""

    def __init__(self, args: ServerArgs, model_config: Any | None, tp: TPGroup, device: torch.device | None) -> None:
        super().__init__(args, model_config, tp, device)
        self.sender = BatchSender(tp, self.device)
        self.heartbeat_s = min(HEARTBEAT_S, self.args.dist_timeout / 4) if self.args.dist_timeout else HEARTBEAT_S

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        self.sender.send(batch)
        return super().forward(batch)

    def heartbeat(self) -> None:
        self.sender.send_idle()

    def close(self) -> None:
        if self.tp.group is not None:
            self.sender.send_stop()
            self.tp.destroy()
