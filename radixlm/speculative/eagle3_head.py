"""An EAGLE-3 draft head in the published checkpoint layout, and the capture of the target's
intermediate hidden states it reads.

Layout: a LlamaConfig-like `config.json` (`draft_vocab_size`, optionally `target_hidden_size`
and `eagle_config.eagle_aux_hidden_state_layer_ids`), `fc.weight` [hidden, 3 * target hidden]
(no bias) over the concatenated outputs of three target layers, one `midlayer.*` decoder layer
whose attention reads `[input_layernorm(embed(token)), hidden_norm(hidden)]` (2 * hidden wide)
and adds its output to the un-normed hidden, `norm.weight`, `lm_head.weight` over the draft
vocabulary and `d2t` (draft id -> target id offset). `t2d` (which target ids the draft vocabulary
holds) is not needed for drafting and is skipped. The next row's hidden is the midlayer's output
before `norm`; only the LM head reads it normed.

Captured layers: the outputs (residual stream, before the final norm) of the layers named by
`eagle_aux_hidden_state_layer_ids`, by default layers 1, N // 2 - 1 and N - 4 of an N-layer target
(the inputs of layers 2, N // 2 and N - 3).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.distributed.group import TPGroup
from radixlm.forward.batch import ForwardBatch
from radixlm.layers.basic import RMSNorm
from radixlm.layers.linear import AttentionHeads, QKVParallelLinear
from radixlm.models.llama import LlamaAttention, LlamaMLP, head_dim_of
from radixlm.speculative.eagle_head import load_into, place, pop_vocab_tensor, read_tensors


def aux_layer_ids(config: Any, num_target_layers: int) -> list[int]:
    """The target layers whose outputs the head reads; ValueError when one does not exist."""
    eagle = getattr(config, "eagle_config", None) or {}
    ids = eagle.get("eagle_aux_hidden_state_layer_ids")
    if ids is None:
        n = num_target_layers
        ids = [1, n // 2 - 1, n - 4]
    if len(ids) != 3 or not all(0 <= i < num_target_layers for i in ids):
        raise ValueError(
            f"EAGLE3 draft head: auxiliary hidden-state layers {ids} do not name three of the target's "
            f"{num_target_layers} layers (set eagle_config.eagle_aux_hidden_state_layer_ids in its config.json)"
        )
    return list(ids)


class AuxCapture:
    """Forward hooks on target layers keeping each one's output (mlp output + residual) of the
    forward in progress; `features(hidden)` returns them concatenated [T, 3 * hidden] (the final
    hidden `hidden` itself is not used) and forgets them."""

    def __init__(self, layers: nn.ModuleList, ids: list[int]) -> None:
        self.ids = ids
        self.outputs: dict[int, torch.Tensor] = {}
        for i in sorted(set(ids)):
            layers[i].register_forward_hook(self._hook(i))

    def _hook(self, i: int) -> Any:
        def keep(module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            self.outputs[i] = output[0] + output[1]

        return keep

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.outputs[i] for i in self.ids], dim=-1)
        self.outputs = {}
        return out


class Eagle3Layer(nn.Module):
    """The midlayer: attention over `[norm(embeds), norm(hidden)]`, residual from `hidden`."""

    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__()
        tp = TPGroup.single()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = LlamaAttention(config, 0, backend, tp)
        heads = AttentionHeads.split(config.num_attention_heads, config.num_key_value_heads, tp)
        bias = bool(getattr(config, "attention_bias", False))
        self.self_attn.qkv_proj = QKVParallelLinear(2 * hidden, head_dim_of(config), heads, bias, tp)
        self.mlp = LlamaMLP(config, tp)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.hidden_norm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(
        self, positions: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        h = hidden + self.self_attn(positions, x, batch)
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Head(nn.Module):
    """`forward(embeds, positions, features, batch, from_target)` -> output hidden [T, hidden]:
    rows fed the target's features go through `fc` first, rows fed the head's own output do not.
    `draft_ids` maps the draft vocabulary's argmax to target ids. Invariant: attention reads and
    writes only the head's own KV pool, through `backend`."""

    def __init__(self, config: Any, backend: AttentionBackend, target_hidden: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        draft_vocab = getattr(config, "draft_vocab_size", None) or config.vocab_size
        self.fc = nn.Linear(3 * target_hidden, hidden, bias=False)
        self.midlayer = Eagle3Layer(config, backend)
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, draft_vocab, bias=False)
        self.register_buffer("d2t", torch.zeros(draft_vocab, dtype=torch.int64))
        self.embed: Optional[nn.Embedding] = None  # set when the checkpoint has its own
        self.layers = [self.midlayer]  # where the drafter finds the attention backend

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        features: torch.Tensor,
        batch: ForwardBatch,
        from_target: bool = True,
    ) -> torch.Tensor:
        hidden = self.fc(features.to(embeds.dtype)) if from_target else features
        return self.midlayer(positions, embeds, hidden, batch)

    def draft_ids(self, out: torch.Tensor, target: Any) -> torch.Tensor:
        """Greedy target-vocabulary ids [N] of output hidden `out` [N, hidden]."""
        draft = (self.norm(out).float() @ self.lm_head.weight.float().T).argmax(dim=-1)
        return draft + self.d2t[draft]


def load_eagle3_head(
    path: str, config: Any, target_config: Any, backend: AttentionBackend, dtype: torch.dtype, device: torch.device
) -> Eagle3Head:
    """The EAGLE-3 head at `path` (config `config`, checked with `check_head_shape`), attending
    through `backend`; ValueError when it cannot read `target_config`'s hidden states or a tensor
    does not fit its config."""
    if config.num_hidden_layers != 1:
        raise ValueError(
            f"EAGLE3 draft head: num_hidden_layers {config.num_hidden_layers}, only one midlayer is supported"
        )
    target_hidden = getattr(config, "target_hidden_size", None) or config.hidden_size
    if target_hidden != target_config.hidden_size:
        raise ValueError(
            f"EAGLE3 draft head: target_hidden_size {target_hidden} does not match the target model's "
            f"{target_config.hidden_size}"
        )
    tensors = read_tensors(path)
    tensors.pop("t2d", None)  # which target ids the draft vocabulary holds: not needed to draft
    d2t = tensors.pop("d2t", None)
    embed = pop_vocab_tensor(tensors, "embed_tokens.weight", config)
    head = Eagle3Head(config, backend, target_hidden)
    load_into(head, tensors)
    if d2t is not None:
        if tuple(d2t.shape) != tuple(head.d2t.shape):
            raise ValueError(f"EAGLE3 draft head: d2t is {tuple(d2t.shape)}, expected {tuple(head.d2t.shape)}")
        head.d2t.copy_(d2t.to(torch.int64))
    elif head.d2t.shape[0] != config.vocab_size:
        raise ValueError("EAGLE3 draft head: a draft vocabulary smaller than the target's needs d2t")
    return place(head, embed, dtype, device)
