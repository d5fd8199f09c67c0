"""What the native MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE) share on top of Llama: checkpoint
names of experts (one tensor per expert and projection, or already stacked) mapped onto the
stacked `experts.w13_weight` / `experts.w2_weight`, the completeness check of those, and which
sizes must divide by tensor / expert parallelism."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.linear import split_evenly
from radixlm.layers.moe.block import MoEConfig
from radixlm.layers.moe.layer import ExpertShard, ExpertTensor
from radixlm.models.llama import LlamaForCausalLM

# One expert's projection: Mixtral's w1 (gate), w3 (up), w2 (down); Qwen's gate/up/down_proj.
_PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(w1|w3|w2|gate_proj|up_proj|down_proj)\.weight$")
# Every expert at once: as transformers >= 5 holds them in memory, gate_up_proj [E, 2I, H] and
# down_proj [E, H, I]; as GGUF files store them (see gguf_reader), gate_proj and up_proj [E, I, H].
_STACKED_EXPERTS = re.compile(r"^(.*\.experts)\.(gate_up_proj|gate_proj|up_proj|down_proj)(\.weight)?$")
_STACKED_PART = {"gate_up_proj": None, "gate_proj": 0, "up_proj": 1, "down_proj": None}
_PART = {"w1": 0, "gate_proj": 0, "w3": 1, "up_proj": 1, "w2": None, "down_proj": None}


def is_sparse_layer(config: Any, layer_id: int) -> bool:
    """Qwen MoE: layer `layer_id` has experts unless listed in `mlp_only_layers`; with
    `decoder_sparse_step` s, only every s-th layer (1-based) has them."""
    step = getattr(config, "decoder_sparse_step", 1) or 1
    return layer_id not in (getattr(config, "mlp_only_layers", None) or []) and (layer_id + 1) % step == 0


class MoEForCausalLM(LlamaForCausalLM):
    """A Llama-shaped causal LM whose layers' MLPs are (some or all) sparse MoE blocks.
    Construct with `ep_size` (1, or the tensor-parallel size) to split experts across ranks."""

    renormalize_default = False  # Mixtral: True; Qwen MoE: the config's `norm_topk_prob`

    @classmethod
    def moe_config(cls, config: Any) -> MoEConfig:
        return MoEConfig.of(config, bool(getattr(config, "norm_topk_prob", cls.renormalize_default)))

    @classmethod
    def has_dense_layers(cls, config: Any) -> bool:
        return not all(is_sparse_layer(config, i) for i in range(config.num_hidden_layers))

    @classmethod
    def check_mlp_split(cls, config: Any, tp_size: int, ep_size: int) -> None:
        """ValueError when the experts (or the shared expert, or the dense layers' MLPs)
        cannot be split `tp_size` ways with `ep_size`."""
        moe, tp = cls.moe_config(config), TPGroup(0, tp_size)
        ExpertShard.plan(moe.num_experts, moe.intermediate, tp, ep_size)
        if moe.shared_intermediate:
            split_evenly(moe.shared_intermediate, tp, "shared_expert_intermediate_size")
        if cls.has_dense_layers(config):
            split_evenly(config.intermediate_size, tp, "intermediate_size")

    def _target(self, name: str) -> tuple[str, Any]:
        name = name.replace(".block_sparse_moe.", ".mlp.")
        per_expert = _PER_EXPERT.match(name)
        if per_expert:
            prefix, expert, proj = per_expert.groups()
            part = _PART[proj]
            attr = "w2_weight" if part is None else "w13_weight"
            return f"{prefix}.{attr}", ExpertTensor(int(expert), part)
        stacked = _STACKED_EXPERTS.match(name)
        if stacked:
            attr = "w2_weight" if stacked.group(2) == "down_proj" else "w13_weight"
            return f"{stacked.group(1)}.{attr}", ExpertTensor(None, _STACKED_PART[stacked.group(2)])
        return super()._target(name)

    def _missing_keys(self, name: str, loaded: set[str]) -> list[str]:
        """Expert weights are complete when stacked whole, or when each projection came stacked
        or from every expert (experts held by other expert-parallel ranks included: they were
        seen, not read)."""
        if not name.endswith((".experts.w13_weight", ".experts.w2_weight")):
            return super()._missing_keys(name, loaded)
        if f"{name}#{ExpertTensor(None)}" in loaded:
            return []
        experts: nn.Module = self.get_submodule(name.rsplit(".", 1)[0])
        missing = []
        for part in (0, 1) if name.endswith("w13_weight") else (None,):
            if f"{name}#{ExpertTensor(None, part)}" not in loaded:
                keys = [f"{name}#{ExpertTensor(e, part)}" for e in range(experts.shard.num_experts)]
                missing += [k for k in keys if k not in loaded]
        return missing
