"""Qwen3-MoE: Qwen3's attention (per-head q/k RMSNorm) with sparse MoE blocks (top-k routing,
renormalised when `norm_topk_prob`; no shared expert) except in `mlp_only_layers`."""

from __future__ import annotations

from typing import Any

from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.moe.block import moe_block
from radixlm.models.llama import LlamaMLP, LlamaModel
from radixlm.models.moe import MoEForCausalLM, is_sparse_layer
from radixlm.models.qwen3 import Qwen3DecoderLayer


class Qwen3MoeDecoderLayer(Qwen3DecoderLayer):
    def make_mlp(self, config: Any, layer_id: int, tp: TPGroup, ep_size: int = 1) -> nn.Module:
        if not is_sparse_layer(config, layer_id):
            return LlamaMLP(config, tp)
        return moe_block(config.hidden_size, Qwen3MoeForCausalLM.moe_config(config), tp, ep_size)


class Qwen3MoeModel(LlamaModel):
    layer_cls = Qwen3MoeDecoderLayer


class Qwen3MoeForCausalLM(MoEForCausalLM):
    model_cls = Qwen3MoeModel
