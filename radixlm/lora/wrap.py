"""Replace a model's projections by `LoraLinear`s (after its weights are loaded): a native
model's fused, possibly tensor-parallel projections, or the Transformers backend's `nn.Linear`
q/k/v/o/gate/up/down modules."""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import torch
from torch import nn

from radixlm.layers.linear import ColumnParallelLinear, RowParallelLinear
from radixlm.lora.adapter import ModelShapes
from radixlm.lora.batch_info import LoraBatchInfo
from radixlm.lora.config import TARGET_MODULES
from radixlm.lora.layer import LoraKernels, LoraLinear, PartLayout

_HF_LINEAR = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(" + "|".join(TARGET_MODULES) + r")$")

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


Wrapped = list[dict[str, LoraLinear]]


def wrap_model(
    model: nn.Module,
    config: Any,
    info: LoraBatchInfo,
    kernels: LoraKernels,
    scales: tuple[torch.Tensor, list[float]],
    slots: int,
    rank: int,
) -> tuple[Wrapped, ModelShapes]:
    """Wrap every decoder layer's projections in place; returns, per layer, {HF module name:
    the LoraLinear holding it}, and the full (unsharded) shape of each projection. ValueError
    for a model LoRA cannot serve (no decoder-layer stack, or quantized projections)."""
    hf = getattr(model, "hf", None)
    make = _Maker(info, kernels, scales, slots, rank)
    if isinstance(hf, nn.Module):  # the Transformers backend
        return _wrap_hf_linears(hf, make)
    return _wrap_native(model, make), ModelShapes.of(config)


class _Maker:
    """Builds LoraLinears sharing one batch info, kernel pair, scale table, slot count and rank."""

    def __init__(
        self,
        info: LoraBatchInfo,
        kernels: LoraKernels,
        scales: tuple[torch.Tensor, list[float]],
        slots: int,
        rank: int,
    ) -> None:
        self.info, self.kernels, self.scales, self.slots, self.rank = info, kernels, scales, slots, rank

    def __call__(
        self, base: nn.Module, parts: list[PartLayout], in_local: int, out_local: int, reduce: Optional[Callable]
    ) -> LoraLinear:
        w = base.weight
        shape = (self.slots, self.rank, w.dtype, w.device)
        return LoraLinear(base, parts, in_local, out_local, shape, self.info, self.kernels, self.scales, reduce)


def _wrap_hf_linears(hf: nn.Module, make: _Maker) -> tuple[Wrapped, ModelShapes]:
    found: dict[int, dict[str, LoraLinear]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in list(hf.named_modules()):
        match = _HF_LINEAR.search(name)
        if match is None or type(module) is not nn.Linear:
            continue
        target = match.group(2)
        part = PartLayout(target, 0, module.out_features, _identity, _identity)
        wrapped = make(module, [part], module.in_features, module.out_features, None)
        owner_name, attr = name.rsplit(".", 1)
        setattr(hf.get_submodule(owner_name), attr, wrapped)
        found.setdefault(int(match.group(1)), {})[target] = wrapped
        shapes[target] = (module.in_features, module.out_features)
    if not found:
        raise ValueError(f"LoRA adapters: {type(hf).__name__} has no q/k/v/o/gate/up/down_proj linear layers to adapt")
    return [found.get(i, {}) for i in range(max(found) + 1)], ModelShapes(max(found) + 1, shapes)


def _wrap_native(model: nn.Module, make: _Maker) -> Wrapped:
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
            wrapped = make(base, *_layouts(base, names))
            setattr(owner, attr, wrapped)
            found.update({name: wrapped for name in names})
        out.append(found)
    return out


def model_targets(wrapped: list[dict[str, Any]]) -> frozenset[str]:
    """The HF module names every layer has a LoRA-wrapped projection for."""
    if not wrapped:
        return frozenset()
    return frozenset.intersection(*(frozenset(layer) for layer in wrapped))
