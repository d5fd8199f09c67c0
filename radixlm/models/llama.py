"""Llama family (Llama 2/3, Mistral; base of Qwen2/Qwen3): one readable file.

q/k/v and gate/up projections are fused into single matmuls; `load_weights` takes the
Hugging Face tensor names and copies each shard into its slice. With tensor parallelism
(`tp`), attention heads and MLP columns are split across ranks (see `radixlm.layers.linear`);
each rank loads only its shard.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.distributed.group import TPGroup
from radixlm.forward.batch import ForwardBatch
from radixlm.layers.basic import RMSNorm, RotaryEmbedding, fused_silu_and_mul, silu_and_mul, use_fused_kernels
from radixlm.layers.linear import (
    AttentionHeads,
    ColumnParallelLinear,
    QKVParallelLinear,
    copy_checked,
    float_into,
    lm_head,
    logits_fn,
    row_parallel_linear,
    split_evenly,
    vocab_parallel_embedding,
    whole,
)


def _rope_parameters(config: Any) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope = dict(rope)
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaAttention(nn.Module):
    """Self-attention whose KV lives in radixlm's paged pool, reached through the backend."""

    qkv_bias = False  # Qwen2 turns this on.
    qk_norm = False  # Qwen3 turns this on.

    def __init__(self, config: Any, layer_id: int, backend: AttentionBackend, tp: TPGroup) -> None:
        super().__init__()
        self.layer_id, self.backend = layer_id, backend
        heads = AttentionHeads.split(config.num_attention_heads, config.num_key_value_heads, tp)
        self.num_heads, self.num_kv_heads = heads.num_heads, heads.num_kv_heads  # this rank's
        self.head_dim = head_dim_of(config)
        self.scale = self.head_dim**-0.5
        bias = getattr(config, "attention_bias", False) or getattr(config, "qkv_bias", self.qkv_bias)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, heads, bias, tp)
        o_bias = getattr(config, "attention_bias", False)
        self.o_proj = row_parallel_linear(config.num_attention_heads * self.head_dim, config.hidden_size, o_bias, tp)
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(self.head_dim, config.max_position_embeddings, _rope_parameters(config))

    def forward(self, positions: torch.Tensor, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        out = self.backend.attend(self.rotary, positions, q, k, v, self.layer_id, self.scale, batch)
        return self.o_proj(out.reshape(-1, q_size))


class LlamaMLP(nn.Module):
    """Gated SiLU MLP with the gate and up projections in one matmul."""

    def __init__(self, config: Any, tp: TPGroup) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        size = config.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(config.hidden_size, [size, size], bias, tp)
        self.down_proj = row_parallel_linear(size, config.hidden_size, bias, tp)
        self.act = silu_and_mul

    def init_cache(self, device: torch.device) -> None:
        self._chosen = self.act = fused_silu_and_mul if use_fused_kernels(device) else silu_and_mul

    def use_native(self, native: bool) -> None:
        """Run the torch SiLU-and-mul (True: for torch.compile to fuse) or the one chosen at init."""
        self.act = silu_and_mul if native else getattr(self, "_chosen", silu_and_mul)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    attention_cls = LlamaAttention

    def __init__(self, config: Any, layer_id: int, backend: AttentionBackend, tp: TPGroup, **mlp_kwargs: Any) -> None:
        super().__init__()
        self.self_attn = self.attention_cls(config, layer_id, backend, tp)
        self.mlp = self.make_mlp(config, layer_id, tp, **mlp_kwargs)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def make_mlp(self, config: Any, layer_id: int, tp: TPGroup) -> nn.Module:
        """The layer's feed-forward block (MoE models return a sparse block here)."""
        return LlamaMLP(config, tp)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mlp output, residual stream before it); the caller adds them (fused into the next norm)."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(positions, h, batch)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm. The residual stream (the running sum between the
    layers) carries the embedding's dtype: type promotion in each norm's residual add keeps it
    there, while every norm hands its projections the layer weights' dtype. The final norm's
    output (what the LM head multiplies) is in the final norm weight's dtype."""

    layer_cls = LlamaDecoderLayer

    def __init__(self, config: Any, backend: AttentionBackend, tp: TPGroup, **mlp_kwargs: Any) -> None:
        super().__init__()
        self.embed_tokens = vocab_parallel_embedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(
            self.layer_cls(config, i, backend, tp, **mlp_kwargs) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        return self.forward_embeds(self.embed_tokens(input_ids), positions, batch)

    def forward_embeds(self, embeds: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """The decoder stack from input embeddings [T, hidden] (a VLM merges image rows into them)."""
        x, residual = embeds, None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, batch)
        return self.norm(x, residual)[0]


# HF name fragment -> (our parameter fragment, shard index) for fused projections.
_STACKED = {
    ".q_proj.": (".qkv_proj.", 0),
    ".k_proj.": (".qkv_proj.", 1),
    ".v_proj.": (".qkv_proj.", 2),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


class LlamaForCausalLM(nn.Module):
    """Causal LM head over `LlamaModel`. `forward` returns final hidden states [T, hidden];
    `compute_logits` turns selected rows into float32 logits."""

    model_cls = LlamaModel

    def __init__(self, config: Any, backend: AttentionBackend, tp: TPGroup | None = None, **mlp_kwargs: Any) -> None:
        """`mlp_kwargs` reach every layer's `make_mlp` (MoE models: `ep_size`)."""
        super().__init__()
        tp = tp or TPGroup.single()
        self.config, self.tp = config, tp
        self.model = self.model_cls(config, backend, tp, **mlp_kwargs)
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = lm_head(config.vocab_size, config.hidden_size, tp)
        self._logits = logits_fn(config.vocab_size, tp)

    def use_residual_dtype(self, dtype: torch.dtype) -> None:
        """Carry the residual stream, the final norm and the LM head in `dtype` (float32 under
        bfloat16 weights on the CPU) while the decoder layers' weights keep theirs: casts the
        embedding, the final norm and an untied head (`LlamaModel` says why that is enough).
        Call once, on the meta device, after the model is cast to its dtype and before loading."""
        for module in (self.model.embed_tokens, self.model.norm, None if self.tied else self.lm_head):
            if module is not None:
                module.to(dtype=dtype)

    @classmethod
    def check_mlp_split(cls, config: Any, tp_size: int, ep_size: int) -> None:
        """ValueError when the MLPs cannot be split `tp_size` ways (expert parallelism: MoE only)."""
        if ep_size != 1:
            raise ValueError(f"ep_size={ep_size}: expert parallelism applies to MoE models only, not {cls.__name__}")
        split_evenly(config.intermediate_size, TPGroup(0, tp_size), "intermediate_size")

    def init_cache(self, device: torch.device) -> None:
        """Pick the logits kernel for `device` once the model is materialized there."""
        self._logits = logits_fn(self.config.vocab_size, self.tp, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        return self._forward(input_ids, positions, batch)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """The decoder stack; `use_decode_step` replaces it on this instance."""
        return self.model(input_ids, positions, batch)

    def use_decode_step(self, step: Callable[[torch.Tensor, torch.Tensor, ForwardBatch], torch.Tensor]) -> None:
        """`forward` becomes `step`, which must return what `self.model` does for every batch (up to
        float rounding): it runs the batches it has a fused kernel for and hands the others to
        `self.model` (gguf on the CPU: `layers.quantization.gguf_cpu_decode`)."""
        self._forward = step

    def compute_logits(self, hidden: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """float32 logits [N, vocab] of hidden [N, H] (any float dtype: a drafter's may be narrower
        than the head's, see `use_residual_dtype`), into `out` when given."""
        weight = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return self._logits(hidden.to(weight.dtype), weight, out)

    def head_weight_name(self) -> str:
        """The checkpoint tensor the logits multiply by (the embedding when the head is tied)."""
        return "model.embed_tokens.weight" if self.tied else "lm_head.weight"

    def use_head_matmul(self, matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Logits become float32 `matmul(hidden, float head weight)` [N, vocab] (a quantization
        method multiplying the head in the file's blocks, free to use the float weight where that
        is faster); tp 1 only, after loading (`init_cache` would restore the float head)."""
        if self.tp.size != 1:
            raise ValueError("use_head_matmul: the head is split across ranks at tp > 1")
        self._logits = partial(_logits_from, matmul)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Copy HF-named tensors (full tensors or lazy slices) into our (partly fused, possibly
        tensor-parallel) parameters, each layer taking its rank's shard; every parameter must be set."""
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb" in name or (self.tied and name.startswith("lm_head.")):
                continue
            target, shard = self._target(name)
            module_name, attr = target.rsplit(".", 1)
            module = modules.get(module_name)
            if target not in params and attr not in getattr(module, "checkpoint_only", ()):
                raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
            if hasattr(module, "load_shard"):
                module.load_shard(attr, tensor, shard)
            else:
                copy_checked(params[target], whole(tensor), name)
            loaded.add(target if shard is None else f"{target}#{shard}")
        self._check_complete(params, loaded)

    def _target(self, name: str) -> tuple[str, int | None]:
        if not name.startswith(("model.", "lm_head.")):
            # A base-model checkpoint (saved from LlamaModel / Qwen3Model, as Qwen3-Embedding is) has no prefix.
            name = f"model.{name}"
        for hf, (ours, shard) in _STACKED.items():
            if hf in name:
                return name.replace(hf, ours), shard
        return name, None

    def _check_complete(self, params: dict[str, nn.Parameter], loaded: set[str]) -> None:
        missing = [key for name in params for key in self._missing_keys(name, loaded)]
        if missing:
            raise ValueError(f"checkpoint is missing tensors for: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def _missing_keys(self, name: str, loaded: set[str]) -> list[str]:
        """The load keys of parameter `name` (one per fused shard) that no checkpoint tensor set."""
        fused = ".qkv_proj." in name or ".gate_up_proj." in name
        shards = 3 if ".qkv_proj." in name else 2
        keys = [f"{name}#{i}" for i in range(shards)] if fused else [name]
        return [k for k in keys if k not in loaded]


def _logits_from(
    matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    weight: torch.Tensor,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`logits_fn`'s signature over `use_head_matmul`'s matmul."""
    return float_into(matmul(hidden, weight), out)


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral is Llama's architecture (sliding window not applied: see docs/architecture.md)."""
