"""Replace a native model's projections by `LoraLinear`s (after its weights are loaded)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from radixlm.layers.linear import ColumnParallelLinear, RowParallelLinear
from radixlm.lora.batch_info import LoraBatchInfo
from radixlm.lora.layer import LoraKernels, LoraLinear, PartLayout

# our fused projection (attribute path inside a decoder layer) -> the HF modules it fuses, in order
FUSED = {
    "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "self_attn.o_proj": ("o_proj",),
    "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.down_proj": ("down_proj",),
}


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _layouts(base: nn.Module, names: tuple[str, ...]) -> tuple[list[PartLayout], int, int, Optional[Callable]]:
    """(parts, in_local, out_local, reduce) of a column- or row-parallel projection."""
    if isinstance(base, RowParallelLinear):
        start, n = base.tp.rank * base.local_in, base.local_in
        out = base.weight.shape[0]
        part = PartLayout(names[0], 0, out, _identity, lambda t: t.narrow(1, start, n))
        return [part], n, out, base.tp.all_reduce
    if not isinstance(base, ColumnParallelLinear):
        raise ValueError(f"LoRA cannot wrap a {type(base).__name__} (quantized or unknown projection)")
    parts, offset = [], 0
    for p, (name, size) in enumerate(zip(names, base.local_sizes)):
        parts.append(PartLayout(name, offset, size, lambda t, p=p: base._rows(t, p), _identity))
        offset += size
    return parts, base.weight.shape[1], offset, None


def wrap_model(
    model: nn.Module,
    info: LoraBatchInfo,
    kernels: LoraKernels,
    scales: tuple[torch.Tensor, list[float]],
    slots: int,
    rank: int,
) -> list[dict[str, LoraLinear]]:
    """Wrap every decoder layer's projections in place; returns, per layer, {HF module name:
    the LoraLinear holding it}. ValueError for a model LoRA cannot serve (not a native
    decoder-layer stack, or quantized projections)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or getattr(model, "quant_plan", None) is not None:
        raise ValueError(
            f"LoRA adapters need a native, unquantized model; {type(model).__name__} "
            f"{'is quantized' if getattr(model, 'quant_plan', None) is not None else 'has no decoder layers'}"
        )
    out = []
    for layer in layers:
        found: dict[str, LoraLinear] = {}
        for path, names in FUSED.items():
            owner_name, attr = path.split(".")
            owner = getattr(layer, owner_name, None)
            base = getattr(owner, attr, None)
            if base is None:
                continue  # e.g. a sparse MoE block has no gate_up_proj
            parts, in_local, out_local, reduce = _layouts(base, names)
            w = base.weight
            wrapped = LoraLinear(
                base, parts, in_local, out_local, (slots, rank, w.dtype, w.device), info, kernels, scales, reduce
            )
            setattr(owner, attr, wrapped)
            found.update({name: wrapped for name in names})
        out.append(found)
    return out


def model_targets(wrapped: list[dict[str, Any]]) -> frozenset[str]:
    """The HF module names every layer has a LoRA-wrapped projection for."""
    if not wrapped:
        return frozenset()
    return frozenset.intersection(*(frozenset(layer) for layer in wrapped))
