"""Which weights a model runs from, chosen once at start-up from `--quantization`.

`gguf`, `fp8`, `awq`, `gptq`: as asked. `none`: float weights (a .gguf file dequantized at load;
refused for a checkpoint that is itself quantized). Unset: the checkpoint's own
`quantization_config`, and for a .gguf file on the CPU its blocks kept (`gguf`, as llama.cpp runs
it) where the CPU kernels multiply every projection's block type (`gguf.cpu_blocks_reason`) and the
model can hold them (native, tp 1, no LoRA); any other .gguf file, and every one on a GPU, is
dequantized at load. A .gguf model logs the choice and the flag that changes it.
`--gguf-cpu-activations int8` needs the blocks kept on the CPU.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

NONE = "none"  # --quantization none: float weights


def choose_quantization(args: Any, config: Any, device: torch.device) -> Optional[str]:
    """The `quantization` for `build_model` (None: unquantized, or the checkpoint's own) from
    `args` (a `ServerArgs`) for `config` on `device`; raises ValueError for a contradiction."""
    from radixlm.model_loader.loader import is_gguf

    requested = args.quantization
    gguf = is_gguf(args.model_path) and args.load_format in ("auto", "gguf")
    if requested == NONE:
        quant = getattr(config, "quantization_config", None)
        if quant is not None:
            method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
            raise ValueError(
                f"--quantization none: the checkpoint is quantized ({method}) and cannot be loaded as float; "
                "drop the flag"
            )
        chosen = None
    elif requested is not None:
        chosen = requested
    elif gguf:
        chosen = _gguf_default(args, config, device)
    else:
        chosen = None
    _check_activations(args, chosen, device)
    return chosen


def _gguf_default(args: Any, config: Any, device: torch.device) -> Optional[str]:
    """`gguf` when this .gguf file's blocks can be kept on `device` by default, else None; logs which."""
    reason = _why_dequantized(args, config, device)
    if reason is None:
        logger.info(
            "weights: GGUF blocks kept on the CPU (quantization gguf, %s activations); --quantization none "
            "loads them dequantized to float, --gguf-cpu-activations int8 trades exactness for speed",
            args.gguf_cpu_activations,
        )
        return "gguf"
    logger.info("weights: GGUF tensors dequantized to float at load (%s); --quantization gguf keeps the blocks", reason)
    return None


def _why_dequantized(args: Any, config: Any, device: torch.device) -> Optional[str]:
    """Why a .gguf file is not kept in its blocks by default, or None when it is."""
    if device.type != "cpu":
        return f"the default on {device.type}"
    if args.tp_size != 1:
        return "tp_size > 1"
    if args.lora_paths or args.enable_lora:
        return "LoRA adapters need float projections"
    from radixlm.models.registry import resolve_model_impl

    if resolve_model_impl(getattr(config, "architectures", None) or [], args.model_impl) == "transformers":
        return "the Transformers backend runs float weights only"
    from radixlm.layers.quantization.gguf import cpu_blocks_reason

    return cpu_blocks_reason(args.model_path)


def _check_activations(args: Any, chosen: Optional[str], device: torch.device) -> None:
    if args.gguf_cpu_activations != "float32" and (chosen != "gguf" or device.type != "cpu"):
        raise ValueError(
            f"--gguf-cpu-activations {args.gguf_cpu_activations} applies to GGUF blocks kept on the CPU; "
            f"this model runs {'on ' + device.type if device.type != 'cpu' else 'float weights'} "
            "(a .gguf file with --quantization gguf, or unset, on the CPU)"
        )
