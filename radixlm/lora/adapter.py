"""One LoRA adapter's weights read from PEFT's `adapter_model.safetensors` and checked against the
base model's shapes. The weights stay in host memory (float32); the pool copies them to the
device when a batch needs the adapter."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from radixlm.lora.config import WEIGHTS_FILE, AdapterConfig, read_adapter_config

_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class ModelShapes:
    """The base model's projection shapes, (in_features, out_features) per target module name."""

    num_layers: int
    shapes: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, config: Any) -> "ModelShapes":
        hidden, inter = config.hidden_size, config.intermediate_size
        head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
        q, kv = config.num_attention_heads * head_dim, getattr(config, "num_key_value_heads", None)
        kv = (kv or config.num_attention_heads) * head_dim
        shapes = {
            "q_proj": (hidden, q),
            "k_proj": (hidden, kv),
            "v_proj": (hidden, kv),
            "o_proj": (q, hidden),
            "gate_proj": (hidden, inter),
            "up_proj": (hidden, inter),
            "down_proj": (inter, hidden),
        }
        return cls(config.num_hidden_layers, shapes)


@dataclass
class LoraAdapter:
    """Invariant: `weights[(layer, module)] = (A [rank, in], B [out, rank])` float32 on the host,
    for every layer and every module in `config.targets`, and nothing else."""

    name: str
    path: str
    config: AdapterConfig
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def rank(self) -> int:
        return self.config.rank


def load_adapter(name: str, path: str, shapes: ModelShapes, max_rank: int | None = None) -> LoraAdapter:
    """Read and check the adapter at directory `path` (ValueError naming the adapter and problem)."""
    config = read_adapter_config(name, path, max_rank)
    file = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(file):
        raise ValueError(f"LoRA adapter {name!r}: no {WEIGHTS_FILE} in {path!r}")
    from safetensors import SafetensorError, safe_open

    pieces: dict[tuple[int, str, str], torch.Tensor] = {}
    try:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                pieces[_parse_name(name, key, config)] = f.get_tensor(key).float()
    except SafetensorError as exc:
        raise ValueError(f"LoRA adapter {name!r}: cannot read {file} ({exc})") from None
    return LoraAdapter(name, path, config, _pair_up(name, pieces, config, shapes))


def _parse_name(name: str, key: str, config: AdapterConfig) -> tuple[int, str, str]:
    match = _NAME.search(key)
    if match is None or match.group(2) not in config.targets:
        raise ValueError(f"LoRA adapter {name!r}: unexpected tensor {key!r} (not a LoRA A/B of a target module)")
    return int(match.group(1)), match.group(2), match.group(3)


def _pair_up(
    name: str, pieces: dict[tuple[int, str, str], torch.Tensor], config: AdapterConfig, shapes: ModelShapes
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    weights = {}
    for layer in range(shapes.num_layers):
        for module in sorted(config.targets):
            a, b = pieces.pop((layer, module, "A"), None), pieces.pop((layer, module, "B"), None)
            if a is None or b is None:
                raise ValueError(f"LoRA adapter {name!r}: layer {layer} {module} lacks its lora_A or lora_B weight")
            n_in, n_out = shapes.shapes[module]
            if tuple(a.shape) != (config.rank, n_in) or tuple(b.shape) != (n_out, config.rank):
                raise ValueError(
                    f"LoRA adapter {name!r}: layer {layer} {module} has A {tuple(a.shape)} / B {tuple(b.shape)}, "
                    f"the model needs ({config.rank}, {n_in}) / ({n_out}, {config.rank})"
                )
            weights[layer, module] = (a.contiguous(), b.contiguous())
    if pieces:
        layer, module, _ = next(iter(pieces))
        raise ValueError(f"LoRA adapter {name!r}: weights for layer {layer} {module}, which the model does not have")
    return weights
