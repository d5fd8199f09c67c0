"""A random EAGLE(-1/-2) draft head for a tiny target, saved in the published checkpoint layout:
config.json (a LlamaConfig of one layer), `fc.weight`/`fc.bias`, `layers.0.*` without
`input_layernorm` (optionally with it), optionally `embed_tokens.weight` and `lm_head.weight`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

HEAD_ARGS = ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads", "max_position_embeddings")


def eagle_head_config(target_dir: str, **overrides: Any) -> Any:
    """A one-layer LlamaConfig matching the target's sizes (`overrides` change any field)."""
    from transformers import AutoConfig, LlamaConfig

    target = AutoConfig.from_pretrained(target_dir)
    fields = {name: getattr(target, name) for name in HEAD_ARGS}
    fields.update(intermediate_size=128, num_hidden_layers=1, rms_norm_eps=target.rms_norm_eps)
    rope = getattr(target, "rope_parameters", None)
    if rope:
        fields["rope_parameters"] = dict(rope)
    fields.update(overrides)
    return LlamaConfig(**fields)


def head_tensors(config: Any, seed: int, first_norm: bool = False, own_embed: bool = False) -> dict:
    """Random tensors of an EAGLE head for `config` (HF names, float32)."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.manual_seed(seed)
    hidden = config.hidden_size
    layer = LlamaDecoderLayer(config, 0)
    tensors = {f"layers.0.{k}": v.detach().clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        for name, t in tensors.items():
            if name.endswith("norm.weight"):
                t.uniform_(0.5, 1.5)
    if not first_norm:
        del tensors["layers.0.input_layernorm.weight"]
    fc = torch.nn.Linear(2 * hidden, hidden)
    tensors["fc.weight"], tensors["fc.bias"] = fc.weight.detach().clone(), fc.bias.detach().clone()
    if own_embed:
        tensors["embed_tokens.weight"] = torch.randn(config.vocab_size, hidden) * 0.15
        tensors["lm_head.weight"] = torch.randn(config.vocab_size, hidden) * 0.15
    return tensors


def make_eagle_head(
    out: str | os.PathLike,
    target_dir: str,
    seed: int = 0,
    tensors: Optional[dict] = None,
    first_norm: bool = False,
    own_embed: bool = False,
    **overrides: Any,
) -> str:
    """Save a random head for the target at `target_dir` into `out`; returns the directory."""
    from safetensors.torch import save_file

    config = eagle_head_config(target_dir, **overrides)
    if tensors is None:
        tensors = head_tensors(config, seed, first_norm, own_embed)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    raw = config.to_dict()
    raw["architectures"] = ["LlamaForCausalLM"]
    (path / "config.json").write_text(json.dumps(raw))
    return str(path)
