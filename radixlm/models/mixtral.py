"""Mixtral: the Llama architecture with a sparse MoE block in every layer (top-2 of 8 experts,
softmax over the router's logits, the top-k weights renormalised to sum 1)."""

from __future__ import annotations

from typing import Any

from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.moe.block import moe_block
from radixlm.models.llama import LlamaDecoderLayer, LlamaModel
from radixlm.models.moe import MoEForCausalLM


class MixtralDecoderLayer(LlamaDecoderLayer):
    def make_mlp(self, config: Any, layer_id: int, tp: TPGroup, ep_size: int = 1) -> nn.Module:
        return moe_block(config.hidden_size, MixtralForCausalLM.moe_config(config), tp, ep_size)


class MixtralModel(LlamaModel):
    layer_cls = MixtralDecoderLayer


class MixtralForCausalLM(MoEForCausalLM):
    """Checkpoint names `block_sparse_moe.gate` / `block_sparse_moe.experts.N.w{1,2,3}` load
    into `mlp.gate` / `mlp.experts` (see radixlm.models.moe)."""

    model_cls = MixtralModel
    renormalize_default = True

    @classmethod
    def has_dense_layers(cls, config: Any) -> bool:
        return False
