"""The experts of a MoE layer: stacked weights, sharded across tensor-parallel ranks, and the
implementation (fused Triton kernel on CUDA, the torch reference elsewhere) chosen once at init.

Sharding (`ExpertShard`): with tensor parallelism every rank holds a slice of every expert's
intermediate dimension; with expert parallelism (`ep_size == tp_size`) every rank holds whole
experts, `num_experts / ep_size` of them, and runs them for all tokens (the ids of experts other
ranks hold become -1, which contribute zero). Either way a rank's output is a partial sum: the
caller all-reduces it once per layer (after adding anything else partial, e.g. a shared expert).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from radixlm.distributed.group import TPGroup
from radixlm.layers.basic import use_fused_kernels
from radixlm.layers.linear import copy_checked, split_evenly
from radixlm.layers.moe.reference import experts_reference
from radixlm.layers.moe.routing import select_experts

logger = logging.getLogger(__name__)

ExpertsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (x, router_logits, w13, w2, top_k, renormalize, first_expert) -> this rank's partial output
RoutedFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, bool, int], torch.Tensor]
# (x, router_weight, w13, w2, top_k, renormalize, arrivals, first_expert) -> this rank's partial output
FromHiddenFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, bool, torch.Tensor, int], torch.Tensor
]


@dataclass(frozen=True)
class ExpertShard:
    """The part of the experts one rank holds: experts [first_expert, first_expert + num_local)
    and, of each, intermediate rows [inter_start, inter_start + inter_local)."""

    num_experts: int
    first_expert: int
    num_local: int
    inter_start: int
    inter_local: int

    @classmethod
    def plan(cls, num_experts: int, intermediate: int, tp: TPGroup, ep_size: int) -> "ExpertShard":
        """ep_size 1: split the intermediate dimension tp ways; ep_size == tp.size: split the experts."""
        if ep_size == 1:
            local = split_evenly(intermediate, tp, "moe_intermediate_size")
            return cls(num_experts, 0, num_experts, tp.rank * local, local)
        if ep_size != tp.size:
            raise ValueError(f"ep_size ({ep_size}) must be 1 or equal tp_size ({tp.size})")
        if num_experts % ep_size:
            raise ValueError(f"ep_size {ep_size} must divide the number of experts ({num_experts})")
        local = num_experts // ep_size
        return cls(num_experts, tp.rank * local, local, 0, intermediate)

    @property
    def expert_parallel(self) -> bool:
        return self.num_local != self.num_experts

    def local_expert(self, expert: int) -> Optional[int]:
        """This rank's index of global `expert`, None when another rank holds it."""
        local = expert - self.first_expert
        return local if 0 <= local < self.num_local else None


@dataclass(frozen=True)
class ExpertTensor:
    """Which piece of the stacked expert weights a checkpoint tensor is. `expert` None: every
    expert at once (an already-stacked tensor). `part` of w13: 0 gate, 1 up, None both (stacked)."""

    expert: Optional[int]
    part: Optional[int] = None

    def __str__(self) -> str:
        return f"{'*' if self.expert is None else self.expert}.{'*' if self.part is None else self.part}"


class MoEExperts(nn.Module):
    """`w13_weight` [E_local, 2 * I_local, H] (gate rows first, then up) and `w2_weight`
    [E_local, H, I_local]. `forward(x, topk_weights, topk_ids)` takes global expert ids and
    returns this rank's partial output [T, H], not yet summed over ranks; `routed(x,
    router_logits, top_k, renormalize)` routes first (`select_experts`' contract): on CUDA
    `fused_moe`, whose decode path is three launches for routing and experts together;
    `routed_hidden(x, router_weight, ...)` takes the router's weight instead of its logits (on
    CUDA `fused_moe_from_hidden`: the router's matmul inside the first of those launches)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, tp: TPGroup, ep_size: int = 1) -> None:
        super().__init__()
        self.shard = ExpertShard.plan(num_experts, intermediate, tp, ep_size)
        e, i = self.shard.num_local, self.shard.inter_local
        self.w13_weight = nn.Parameter(torch.empty(e, 2 * i, hidden))
        self.w2_weight = nn.Parameter(torch.empty(e, hidden, i))
        self._experts: ExpertsFn = experts_reference
        self._routed: RoutedFn = self._routed_reference
        self._from_hidden: Optional[FromHiddenFn] = None
        self._arrivals: Optional[torch.Tensor] = None  # the fused router's counter (`new_arrivals`)
        self._ids = self._local_ids if self.shard.expert_parallel else _same_ids

    def init_cache(self, device: torch.device) -> None:
        """Choose the implementation for `device` once the weights are materialized there."""
        fused = use_fused_kernels(device)
        self._experts = _fused_experts() if fused else experts_reference
        self._routed = (_fused_moe() if fused else None) or self._routed_reference
        kernels = _fused_from_hidden() if fused else None
        self._from_hidden = kernels[0] if kernels else None
        self._arrivals = kernels[1](device) if kernels else None

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return self._experts(x, self.w13_weight, self.w2_weight, topk_weights, self._ids(topk_ids))

    def routed(self, x: torch.Tensor, router_logits: torch.Tensor, top_k: int, renormalize: bool) -> torch.Tensor:
        """`forward` on `select_experts(router_logits, top_k, renormalize)`'s routing."""
        w13, w2 = self.w13_weight, self.w2_weight
        return self._routed(x, router_logits, w13, w2, top_k, renormalize, self.shard.first_expert)

    def routed_hidden(
        self, x: torch.Tensor, router_weight: torch.Tensor, top_k: int, renormalize: bool
    ) -> torch.Tensor:
        """`routed(x, x @ router_weight^T, top_k, renormalize)`; on CUDA the router's matmul runs
        inside the fused routing at decode sizes (its logits rounded to x's dtype as the matmul's;
        the summation order may differ in the last bit). One call at a time per layer (the
        fused router's counter is this layer's)."""
        if self._from_hidden is None:
            return self.routed(x, torch.nn.functional.linear(x, router_weight), top_k, renormalize)
        w13, w2 = self.w13_weight, self.w2_weight
        return self._from_hidden(x, router_weight, w13, w2, top_k, renormalize, self._arrivals, self.shard.first_expert)

    def _routed_reference(
        self,
        x: torch.Tensor,
        router_logits: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        top_k: int,
        renormalize: bool,
        first_expert: int,
    ) -> torch.Tensor:
        topk_weights, topk_ids = select_experts(router_logits, top_k, renormalize)
        return self._experts(x, w13, w2, topk_weights, self._ids(topk_ids))

    def _local_ids(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """Global ids -> this rank's, -1 for experts held elsewhere (on the device, no sync)."""
        local = topk_ids - self.shard.first_expert
        return local.masked_fill((local < 0) | (local >= self.shard.num_local), -1)

    def load_shard(self, attr: str, tensor: Any, part: Optional[ExpertTensor]) -> None:
        """Copy this rank's piece of a checkpoint tensor: one expert's gate / up [I, H] or down
        [H, I] projection, or all experts stacked ([E, 2I, H] gate_up, [E, I, H] gate or up,
        [E, H, I] down). Experts held by other ranks are skipped without being read."""
        if part is None:
            raise ValueError(f"expert tensor for {attr} needs an expert id and projection")
        if part.expert is None:
            self._load_stacked(attr, tensor, part.part)
            return
        if not 0 <= part.expert < self.shard.num_experts:
            raise ValueError(f"expert {part.expert} out of range (num_experts {self.shard.num_experts})")
        local = self.shard.local_expert(part.expert)
        if local is None:
            return
        i0, n = self.shard.inter_start, self.shard.inter_local
        if attr == "w2_weight":
            copy_checked(self.w2_weight[local], tensor.narrow(1, i0, n), f"expert {part.expert} down")
        else:
            dest = self.w13_weight[local].narrow(0, (part.part or 0) * n, n)
            copy_checked(dest, tensor.narrow(0, i0, n), f"expert {part.expert} part {part.part}")

    def _load_stacked(self, attr: str, tensor: Any, part: Optional[int]) -> None:
        s = self.shard
        if tensor.shape[0] != s.num_experts:
            raise ValueError(f"stacked {attr}: {tensor.shape[0]} experts in the checkpoint, {s.num_experts} expected")
        mine = tensor.narrow(0, s.first_expert, s.num_local)
        if attr == "w2_weight":
            copy_checked(self.w2_weight, mine.narrow(2, s.inter_start, s.inter_local), "stacked down_proj")
            return
        n = s.inter_local
        if part is not None:  # gate (0) or up (1) alone: [E, I, H]
            dest = self.w13_weight.narrow(1, part * n, n)
            copy_checked(dest, mine.narrow(1, s.inter_start, n), f"stacked part {part}")
            return
        full = mine.shape[1] // 2
        gate, up = mine.narrow(1, s.inter_start, n), mine.narrow(1, full + s.inter_start, n)
        copy_checked(self.w13_weight, torch.cat([gate, up], dim=1), "stacked gate_up_proj")


def _same_ids(topk_ids: torch.Tensor) -> torch.Tensor:
    return topk_ids


@functools.lru_cache(maxsize=1)  # one import (and at most one warning) for all layers
def _fused_experts() -> ExpertsFn:
    """The fused Triton kernel; the reference (with a warning) while it is not installed."""
    try:
        from radixlm.kernels.fused_moe import fused_experts
    except ModuleNotFoundError as exc:
        if exc.name != "radixlm.kernels.fused_moe":
            raise
        logger.warning(
            "radixlm.kernels.fused_moe is not available: MoE layers run the torch reference, which CUDA graphs "
            "cannot capture (use --disable-cuda-graph)"
        )
        return experts_reference
    return fused_experts


@functools.lru_cache(maxsize=1)
def _fused_moe() -> Optional[RoutedFn]:
    """The fused routed MoE (`fused_moe`), None while the kernels are not installed (the
    reference routing then runs `_fused_experts()`'s fallback)."""
    try:
        from radixlm.kernels.fused_moe import fused_moe
    except ModuleNotFoundError as exc:
        if exc.name != "radixlm.kernels.fused_moe":
            raise
        return None
    return fused_moe


@functools.lru_cache(maxsize=1)
def _fused_from_hidden() -> Optional[tuple[FromHiddenFn, Callable[[torch.device], torch.Tensor]]]:
    """(`fused_moe_from_hidden`, `new_arrivals`), None while the kernels are not installed."""
    try:
        from radixlm.kernels.fused_moe import fused_moe_from_hidden, new_arrivals
    except ModuleNotFoundError as exc:
        if exc.name != "radixlm.kernels.fused_moe":
            raise
        return None
    return fused_moe_from_hidden, new_arrivals
