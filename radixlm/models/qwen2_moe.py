"""Qwen2-MoE: Qwen2's attention (q/k/v biases, per `qkv_bias`) with sparse MoE blocks (top-k
routing, renormalised when `norm_topk_prob`, plus a shared expert scaled by
sigmoid(`shared_expert_gate`)) in the layers `decoder_sparse_step` / `mlp_only_layers` select."""

from __future__ import annotations

from typing import Any

from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.moe.block import moe_block
from radixlm.models.llama import LlamaMLP, LlamaModel
from radixlm.models.moe import MoEForCausalLM, is_sparse_layer
from radixlm.models.qwen2 import Qwen2DecoderLayer


class Qwen2MoeDecoderLayer(Qwen2DecoderLayer):
    def make_mlp(self, config: Any, layer_id: int, tp: TPGroup, ep_size: int = 1) -> nn.Module:
        if not is_sparse_layer(config, layer_id):
            return LlamaMLP(config, tp)
        return moe_block(config.hidden_size, Qwen2MoeForCausalLM.moe_config(config), tp, ep_size)


class Qwen2MoeModel(LlamaModel):
    layer_cls = Qwen2MoeDecoderLayer


class Qwen2MoeForCausalLM(MoEForCausalLM):
    model_cls = Qwen2MoeModel
