"""An EAGLE(-1/-2) draft head in the published checkpoint layout, loaded and checked against its
target model.

Layout: a `config.json` shaped like a LlamaConfig (usually one decoder layer), `fc.weight`
[hidden, 2 * hidden] (and `fc.bias` when the checkpoint has one) mixing the concatenation
`[embed(token), target feature]` (embedding first), then `layers.{i}.*` Llama decoder layers. The
first layer has no `input_layernorm` in the published heads (the target feature it reads is
already after the target's final norm), and the head has no final norm: its output is the next
feature itself and goes through the LM head as it is. `embed_tokens.weight` / `lm_head.weight`
are optional: absent, the target's are used. A `model.` prefix on names is accepted.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from torch import nn
from transformers import LlamaConfig

from radixlm.attention.base import AttentionBackend
from radixlm.distributed.group import TPGroup
from radixlm.forward.batch import ForwardBatch
from radixlm.layers.linear import copy_checked, whole
from radixlm.model_loader.loader import iter_weights, kv_heads_of
from radixlm.models.llama import LlamaDecoderLayer, head_dim_of

# HF projection names -> (our fused parameter, shard index), as radixlm.models.llama loads them.
_FUSED = {
    ".q_proj.": (".qkv_proj.", 0),
    ".k_proj.": (".qkv_proj.", 1),
    ".v_proj.": (".qkv_proj.", 2),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


def read_head_config(path: str) -> LlamaConfig:
    """The head's config.json as a LlamaConfig; ValueError when it is missing."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise ValueError(f"EAGLE draft head at {path!r}: no config.json")
    with open(file) as f:
        raw = json.load(f)
    raw.pop("architectures", None)
    return LlamaConfig(**raw)


def check_head_shape(config: Any, target: Any, context_len: int) -> None:
    """ValueError naming the first field where the head cannot draft for `target`'s config."""
    for name in ("hidden_size", "vocab_size"):
        mine, theirs = getattr(config, name), getattr(target, name)
        if mine != theirs:
            raise ValueError(f"EAGLE draft head: {name} {mine} does not match the target model's {theirs}")
    if config.max_position_embeddings < context_len:
        raise ValueError(
            f"EAGLE draft head: max_position_embeddings {config.max_position_embeddings} is below the "
            f"target's context length {context_len}"
        )


class EagleHead(nn.Module):
    """`forward(embeds, positions, features, batch)` -> the head's output features [T, hidden]
    (the next features, also what the LM head turns into draft logits). Invariant: attention reads and
    writes only the head's own KV pool, through `backend`."""

    def __init__(self, config: Any, backend: AttentionBackend, fc_bias: bool, first_norm: bool) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=fc_bias)
        tp = TPGroup.single()
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, backend, tp) for i in range(config.num_hidden_layers))
        if not first_norm:
            self.layers[0].input_layernorm = nn.Identity()
        self.embed: Optional[nn.Embedding] = None  # set by `load_eagle_head` when the checkpoint has its own
        self.head_weight: Optional[nn.Parameter] = None

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        features: torch.Tensor,
        batch: ForwardBatch,
        from_target: bool = True,
    ) -> torch.Tensor:
        """Output features of rows fed `embeds` and `features` (the target's or the head's own:
        EAGLE-1 treats both alike)."""
        x, residual = self.fc(torch.cat([embeds, features.to(embeds.dtype)], dim=-1)), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, batch)
        return x + residual

    def draft_ids(self, out: torch.Tensor, target: Any) -> torch.Tensor:
        """Greedy target-vocabulary ids [N] of output features `out` [N, hidden]."""
        if self.head_weight is not None:
            logits = out.float() @ self.head_weight.float().T
        else:
            logits = target.compute_logits(out)
        return logits[:, : target.config.vocab_size].argmax(dim=-1)


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy HF-named head tensors into `module`; ValueError for a tensor with no place or a shape
    that does not match, or a parameter left unset."""
    params = dict(module.named_parameters())
    modules = dict(module.named_modules())
    loaded: set[str] = set()
    for name, tensor in tensors.items():
        target, shard = _target(name)
        if target not in params:
            raise ValueError(f"EAGLE draft head: checkpoint tensor {name!r} has no place in the head")
        owner = modules[target.rsplit(".", 1)[0]]
        attr = target.rsplit(".", 1)[1]
        try:
            if hasattr(owner, "load_shard"):
                owner.load_shard(attr, tensor, shard)
            else:
                copy_checked(params[target], whole(tensor), name)
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise ValueError(f"EAGLE draft head: tensor {name!r} does not fit the head's config: {exc}") from exc
        loaded.add(target if shard is None else f"{target}#{shard}")
    missing = [key for key in _load_keys(params) if key not in loaded]
    if missing:
        raise ValueError(f"EAGLE draft head: checkpoint is missing {missing[:4]}")


def load_eagle_head(
    path: str, config: Any, backend: AttentionBackend, dtype: torch.dtype, device: torch.device
) -> EagleHead:
    """The head at `path` whose config (`read_head_config`, checked with `check_head_shape`) is
    `config`, attending through `backend`; ValueError when a tensor does not fit the config."""
    tensors = read_tensors(path)
    head = EagleHead(config, backend, "fc.bias" in tensors, _has_first_norm(tensors))
    embed, lm = (
        pop_vocab_tensor(tensors, "embed_tokens.weight", config),
        pop_vocab_tensor(tensors, "lm_head.weight", config),
    )
    load_into(head, tensors)
    head = place(head, embed, dtype, device)
    if lm is not None:
        head.head_weight = nn.Parameter(lm.to(device=device, dtype=dtype), requires_grad=False)
    return head


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at `path`, names without a `model.` prefix."""
    return {_strip(name): whole(t) for name, t in iter_weights(path, "auto")}


def pop_vocab_tensor(tensors: dict[str, torch.Tensor], name: str, config: Any) -> Optional[torch.Tensor]:
    """`tensors[name]` removed (None when absent), checked to be [vocab, hidden]."""
    want = (config.vocab_size, config.hidden_size)
    tensor = tensors.pop(name, None)
    if tensor is not None and tuple(tensor.shape) != want:
        raise ValueError(f"EAGLE draft head: {name} is {tuple(tensor.shape)}, expected {want}")
    return tensor


def place(head: Any, embed: Optional[torch.Tensor], dtype: torch.dtype, device: torch.device) -> Any:
    """`head` cast to `dtype` on `device`, its caches built, with its own embedding if given."""
    head = head.to(device=device, dtype=dtype)
    for module in head.modules():
        if hasattr(module, "init_cache"):  # rotary tables (float32) and kernel choices, after the cast
            module.init_cache(device)
    if embed is not None:
        head.embed = nn.Embedding.from_pretrained(embed.to(device=device, dtype=dtype))
    return head


def head_kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of the head's own KV pool."""
    return config.num_hidden_layers, kv_heads_of(config), head_dim_of(config)


def _has_first_norm(tensors: dict[str, torch.Tensor]) -> bool:
    return "layers.0.input_layernorm.weight" in tensors


def _strip(name: str) -> str:
    return name[len("model.") :] if name.startswith("model.") else name


def _target(name: str) -> tuple[str, Optional[int]]:
    for hf, (ours, shard) in _FUSED.items():
        if hf in name:
            return name.replace(hf, ours), shard
    return name, None


def _load_keys(params: dict[str, nn.Parameter]) -> list[str]:
    """Every key `load` must set: one per fused shard, one per other parameter."""
    keys = []
    for name in params:
        if ".qkv_proj." in name:
            keys += [f"{name}#{i}" for i in range(3)]
        elif ".gate_up_proj." in name:
            keys += [f"{name}#{i}" for i in range(2)]
        else:
            keys.append(name)
    return keys
