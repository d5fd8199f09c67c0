"""Which quantization method a model runs, from `--quantization` and the checkpoint's
`quantization_config`, checked once at start-up.

Every refusal is a ValueError naming the field (or flag) and what would work: an unknown
`quant_method`, a bit width other than 4 (AWQ/GPTQ), act-order (`desc_act: true`), an AWQ
`version` other than GEMM, a flag that contradicts the checkpoint, or a method the device cannot
run (fp8 needs compute capability 8.9+ on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from radixlm.layers.quantization.base import LinearMethod

QUANT_METHODS = ("fp8", "awq", "gptq", "gguf")
# Our fused layers and the checkpoint's modules they hold (for `modules_to_not_convert`).
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

MethodFor = Callable[[str], Optional[LinearMethod]]


@dataclass(frozen=True)
class QuantPlan:
    """The resolved method: `methods(model)` gives each linear layer's method (None: stays float);
    `info` is what `get_server_info` reports; `raw_names` the GGUF tensors loaded as blocks;
    `finish(model, device)`, when set, runs once after every layer's `finish_loading`."""

    name: str
    methods: Callable[[nn.Module], MethodFor]
    info: dict[str, Any] = field(default_factory=dict)
    raw_names: frozenset[str] = frozenset()
    finish: Optional[Callable[[nn.Module, torch.device], None]] = None


def checkpoint_quant_config(hf_config: Any) -> Optional[dict[str, Any]]:
    """The checkpoint's `quantization_config` as a dict, or None."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None or isinstance(qc, dict):
        return qc
    return qc.to_dict()


def resolve_quantization(
    hf_config: Any, requested: Optional[str], is_gguf: bool, device: torch.device
) -> Optional[QuantPlan]:
    """The plan for `--quantization requested` (None: from the checkpoint) on `device`; None
    when the model runs unquantized. GGUF plans come from `gguf.gguf_plan` (they need the file)."""
    qc = checkpoint_quant_config(hf_config)
    if requested is not None and requested not in QUANT_METHODS:
        raise ValueError(f"--quantization must be one of {list(QUANT_METHODS)}, got {requested!r}")
    if qc is None:
        plan = _without_checkpoint_config(requested, is_gguf)
    else:
        plan = _from_checkpoint_config(qc, requested)
    if plan is not None:
        check_device(plan.name, device)
    return plan


def _without_checkpoint_config(requested: Optional[str], is_gguf: bool) -> Optional[QuantPlan]:
    if requested is None or requested == "gguf":
        if requested == "gguf" and not is_gguf:
            raise ValueError("--quantization gguf needs a .gguf model file")
        return None
    if requested == "fp8":
        from radixlm.layers.quantization.fp8 import Fp8Method

        method = Fp8Method(online=True)
        return QuantPlan("fp8", lambda model: lambda name: method, method.describe())
    raise ValueError(
        f"--quantization {requested} needs a checkpoint quantized with {requested} (its config.json "
        f"has no quantization_config); only fp8 quantizes a float checkpoint at load"
    )


def _from_checkpoint_config(qc: dict[str, Any], requested: Optional[str]) -> QuantPlan:
    method_name = str(qc.get("quant_method", "")).lower()
    if method_name not in ("fp8", "awq", "gptq"):
        raise ValueError(
            f"quantization_config.quant_method {qc.get('quant_method')!r} is not supported; "
            f"radixlm runs checkpoints quantized with fp8, awq or gptq"
        )
    if requested is not None and requested != method_name:
        raise ValueError(
            f"--quantization {requested} contradicts the checkpoint's quantization_config.quant_method "
            f"{method_name!r}; drop the flag or pass --quantization {method_name}"
        )
    if method_name == "fp8":
        method: LinearMethod = _fp8_checkpoint(qc)
    else:
        from radixlm.layers.quantization.int4 import int4_method

        method = int4_method(method_name, qc)
    skip = tuple(qc.get("modules_to_not_convert") or qc.get("ignored_layers") or ())
    return QuantPlan(method_name, lambda model: _skipping(method, skip), method.describe())


def _fp8_checkpoint(qc: dict[str, Any]) -> LinearMethod:
    from radixlm.layers.quantization.fp8 import Fp8Method

    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"quantization_config.fmt {fmt!r}: fp8 checkpoints must be e4m3")
    block = qc.get("weight_block_size")
    if block is not None:
        if len(block) != 2 or any(int(b) <= 0 or int(b) % 16 for b in block):
            raise ValueError(f"quantization_config.weight_block_size {block!r}: expected [bn, bk], multiples of 16")
        block = (int(block[0]), int(block[1]))
    return Fp8Method(online=False, block=block)


def _skipping(method: LinearMethod, skip: tuple[str, ...]) -> MethodFor:
    """`method` for every layer except those `modules_to_not_convert` names (all parts of a fused
    layer must agree)."""

    def method_for(name: str) -> Optional[LinearMethod]:
        stem, _, last = name.rpartition(".")
        names = [f"{stem}.{part}" for part in _FUSED.get(last, (last,))]
        skipped = [any(s in n for s in skip) for n in names]
        if any(skipped) and not all(skipped):
            raise ValueError(f"modules_to_not_convert leaves only some of {names} unquantized; they share one matmul")
        return None if all(skipped) and skip else method

    return method_for


def check_device(name: str, device: torch.device) -> None:
    """ValueError when `device` cannot run method `name` (CPU runs every method's reference)."""
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    need = (8, 9) if name == "fp8" else (8, 0)
    if capability < need:
        raise ValueError(
            f"--quantization {name} needs a GPU of compute capability {need[0]}.{need[1]} or newer "
            f"({'e4m3 tensor cores' if name == 'fp8' else 'the Triton kernels in bf16'}); this one is "
            f"{capability[0]}.{capability[1]}"
        )
