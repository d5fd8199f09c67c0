"""Owns the model, the KV pool and the attention backend; runs one ForwardBatch to logits."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from radixlm.attention.registry import create_attention_backend
from radixlm.config.server_args import ServerArgs
from radixlm.distributed.batch_sync import BatchSender
from radixlm.distributed.group import TPGroup
from radixlm.forward.batch import ForwardBatch, logit_hidden
from radixlm.layers.linear import AttentionHeads
from radixlm.mem_cache.kv_pool import KVPool, ReqToTokenPool, kv_cache_dtype
from radixlm.model_loader.loader import build_model, kv_heads_of, load_model_config, resolve_dtype
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
    """Invariant: the pool, backend and model are built once and live as long as the runner.

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
        self.dtype = resolve_dtype(args.dtype, self.config, self.device)
        self.vocab_size = self.config.vocab_size
        self.context_len = args.context_length or self.config.max_position_embeddings
        self.max_running = args.max_running_requests or DEFAULT_MAX_RUNNING
        self.pool = self._make_pool()
        self.req_to_token_pool = ReqToTokenPool(self.max_running + 1, self.context_len + args.page_size, self.device)
        self.backend = create_attention_backend(args.attention_backend, self.pool, self.device)
        start = time.perf_counter()
        self.model = build_model(
            self.config,
            self.backend,
            args.model_path,
            args.load_format,
            self.dtype,
            self.device,
            args.random_seed,
            args.model_impl,
            args.trust_remote_code,
            self.context_len,
            self.tp,
        )
        logger.info("model loaded in %.1f s (%s, %s)", time.perf_counter() - start, self.dtype, self.device)
        self.graphs = self._maybe_capture_graphs()

    def _maybe_capture_graphs(self) -> Any:
        """CUDA graphs for decode when on CUDA with a graph-safe backend and not disabled."""
        from radixlm.attention.triton_backend import TritonBackend

        if not self._uses_cuda_graphs() or not isinstance(self.backend, TritonBackend):
            if self.args.enable_torch_compile:
                logger.warning("--enable-torch-compile applies to CUDA-graph decode only: ignored here")
            return None
        from radixlm.executor.cuda_graph_runner import CudaGraphRunner

        max_bs = min(self.args.cuda_graph_max_bs, self.max_running)
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
        )
        logger.info("CUDA graph capture took %.1f s", runner.capture_seconds)
        return runner

    def _make_pool(self) -> KVPool:
        cfg = self.config
        kv_heads, head_dim, layers = self._local_kv_heads(), head_dim_of(cfg), cfg.num_hidden_layers
        kv_dtype = kv_cache_dtype(self.args.kv_cache_dtype, self.dtype)
        per_token = 2 * layers * kv_heads * head_dim * torch.tensor([], dtype=kv_dtype).element_size()
        size = self.args.max_total_tokens or self._default_pool_tokens(per_token)
        size = self.tp.min_int(size, self.device)  # rank 0 allocates slots every rank must hold
        size -= size % self.args.page_size
        if size < self.args.page_size * 2:
            raise ValueError(f"KV pool of {size} tokens is too small")
        logger.info("KV pool: %d tokens (%.2f GiB)", size, size * per_token / 2**30)
        return KVPool(size, self.args.page_size, layers, kv_heads, head_dim, kv_dtype, self.device)

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
        )

    def _default_pool_tokens(self, per_token: int) -> int:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            weights = self._estimate_weight_bytes()
            graphs = 0
            if self._uses_cuda_graphs():
                from radixlm.executor.cuda_graph_runner import logits_buffer_bytes

                graphs = logits_buffer_bytes(min(self.args.cuda_graph_max_bs, self.max_running), self.vocab_size)
            logger.info(
                "KV pool budget: %.0f%% of %.1f GiB, less %.2f GiB in use, %.2f GiB of weights, "
                "%.2f GiB of CUDA-graph logits",
                100 * self.args.mem_fraction_static,
                total / 2**30,
                (total - free) / 2**30,
                weights / 2**30,
                graphs / 2**30,
            )
            return kv_pool_tokens(
                total, free, self.args.mem_fraction_static, weights + graphs, per_token, self.args.page_size
            )
        return int(min(CPU_KV_BUDGET_BYTES // per_token, 64 * self.context_len))

    def _estimate_weight_bytes(self) -> int:
        cfg = self.config
        h, i, layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
        kv = kv_heads_of(cfg) * head_dim_of(cfg)
        per_layer = h * (cfg.num_attention_heads * head_dim_of(cfg)) * 2 + 2 * h * kv + 3 * h * i
        elems = layers * per_layer + 2 * v * h
        return elems * torch.tensor([], dtype=self.dtype).element_size() // self.tp.size

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Run the batch; returns float32 logits for the rows named by `batch.logit_indices`."""
        if self.graphs is not None and self.graphs.can_run(batch):
            return self.graphs.replay(batch)
        self.backend.init_forward_metadata(batch)
        hidden = self.model(batch.input_ids, batch.positions, batch)
        return self.model.compute_logits(logit_hidden(hidden, batch))

    def heartbeat(self) -> None:
        """Called by an idle scheduler every `heartbeat_s` seconds (never at tp 1)."""

    def close(self) -> None:
        """Release what the runner shares with other processes (nothing at tp 1)."""


def kv_pool_tokens(total: int, free: int, fraction: float, reserved: int, per_token: int, page_size: int) -> int:
    """Tokens of KV that fit in `fraction` of a device's `total` bytes once what is already in
    use (`total - free`) and `reserved` bytes still to come (weights, graph buffers) are taken
    out; never fewer than two pages (the pool's own minimum, checked by the caller)."""
    budget = total * fraction - (total - free) - reserved
    return max(int(budget // per_token), page_size * 2)


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
