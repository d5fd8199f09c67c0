"""A sparse MoE block (router, top-k, experts; optionally Qwen2-MoE's gated shared expert) in
place of a decoder layer's MLP.

Every rank computes a partial sum (its slice of each expert's intermediate dimension, or its
whole experts under expert parallelism, plus its slice of the shared expert); the block
all-reduces once at the end. The router and the shared expert's gate are replicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.kernels import gemv
from radixlm.layers.basic import fused_silu_and_mul, silu_and_mul, use_fused_kernels
from radixlm.layers.linear import ColumnParallelLinear, RowParallelLinear
from radixlm.layers.moe.layer import MoEExperts


@dataclass(frozen=True)
class MoEConfig:
    """The MoE fields of a HF config, under one spelling whatever the architecture."""

    num_experts: int
    top_k: int
    intermediate: int
    renormalize: bool
    shared_intermediate: int = 0

    @classmethod
    def of(cls, config: Any, renormalize: bool) -> "MoEConfig":
        """Mixtral: `num_local_experts`, `intermediate_size`; Qwen MoE: `num_experts`,
        `moe_intermediate_size`, `shared_expert_intermediate_size` (Qwen2-MoE only)."""
        experts = getattr(config, "num_experts", None) or config.num_local_experts
        inter = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
        shared = getattr(config, "shared_expert_intermediate_size", None) or 0
        return cls(experts, config.num_experts_per_tok, inter, renormalize, shared)


class PartialRowLinear(RowParallelLinear):
    """A row-parallel linear without its all-reduce: the caller sums the ranks' outputs (once
    for the whole MoE block). No bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemv.linear(x, self.weight)


class SharedExpertMLP(nn.Module):
    """A gated SiLU MLP whose output is this rank's partial sum (see PartialRowLinear)."""

    def __init__(self, hidden: int, intermediate: int, tp: TPGroup) -> None:
        super().__init__()
        self.gate_up_proj = ColumnParallelLinear(hidden, [intermediate, intermediate], False, tp)
        self.down_proj = PartialRowLinear(intermediate, hidden, False, tp)
        self.act = silu_and_mul

    def init_cache(self, device: torch.device) -> None:
        self.act = fused_silu_and_mul if use_fused_kernels(device) else silu_and_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class SparseMoEBlock(nn.Module):
    """out = sum_j w_j * expert_{id_j}(x) over each token's top-k experts (softmax over the
    router's logits, renormalised per `MoEConfig.renormalize`), all-reduced over ranks."""

    def __init__(self, hidden: int, moe: MoEConfig, tp: TPGroup, ep_size: int = 1) -> None:
        super().__init__()
        self.top_k, self.renormalize = moe.top_k, moe.renormalize
        self.gate = nn.Linear(hidden, moe.num_experts, bias=False)
        self.experts = MoEExperts(moe.num_experts, hidden, moe.intermediate, tp, ep_size)
        self._reduce = tp.all_reduce if tp.size > 1 else _unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(self._partial(x))

    def _partial(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts.routed_hidden(x, self.gate.weight, self.top_k, self.renormalize)


class SharedExpertMoEBlock(SparseMoEBlock):
    """Qwen2-MoE: the routed experts plus a shared expert scaled by sigmoid(shared_expert_gate(x)).
    On CUDA the gate, its sigmoid, the scaling and the sum are one launch (`add_gated_shared`)."""

    def __init__(self, hidden: int, moe: MoEConfig, tp: TPGroup, ep_size: int = 1) -> None:
        super().__init__(hidden, moe, tp, ep_size)
        self.shared_expert = SharedExpertMLP(hidden, moe.shared_intermediate, tp)
        self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)
        self._add_shared: AddSharedFn = add_gated_shared_reference

    def init_cache(self, device: torch.device) -> None:
        if use_fused_kernels(device):
            from radixlm.kernels.moe_shared import add_gated_shared

            self._add_shared = add_gated_shared

    def _partial(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared_expert(x)
        return self._add_shared(super()._partial(x), shared, x, self.shared_expert_gate.weight)


# (routed, shared, x, gate_weight) -> routed + sigmoid(x @ gate_weight^T) * shared
AddSharedFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def add_gated_shared_reference(
    routed: torch.Tensor, shared: torch.Tensor, x: torch.Tensor, gate_weight: torch.Tensor
) -> torch.Tensor:
    """routed + sigmoid(x @ gate_weight^T) * shared in torch (`moe_shared.add_gated_shared`'s contract)."""
    return routed + torch.sigmoid(F.linear(x, gate_weight)) * shared


def moe_block(hidden: int, moe: MoEConfig, tp: TPGroup, ep_size: int = 1) -> SparseMoEBlock:
    """A SharedExpertMoEBlock when the config has a shared expert, else a SparseMoEBlock."""
    cls = SharedExpertMoEBlock if moe.shared_intermediate else SparseMoEBlock
    return cls(hidden, moe, tp, ep_size)


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x
