"""Random EAGLE draft heads for a tiny target, saved in the published checkpoint layouts. EAGLE-1/-2:
config.json (a LlamaConfig of one layer), `fc.weight`/`fc.bias`, `layers.0.*` without
`input_layernorm` (optionally with it), optionally `embed_tokens.weight` and `lm_head.weight`.
EAGLE-3: `fc.weight` over three target layers, `midlayer.*`, `norm.weight`, a draft-vocabulary
`lm_head.weight`, `d2t` and `t2d`."""

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
    config = eagle_head_config(target_dir, **overrides)
    if tensors is None:
        tensors = head_tensors(config, seed, first_norm, own_embed)
    return _save(out, config, tensors, "LlamaForCausalLM")


def _save(out: str | os.PathLike, config: Any, tensors: dict, architecture: str) -> str:
    from safetensors.torch import save_file

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    raw = config.to_dict()
    raw["architectures"] = [architecture]
    (path / "config.json").write_text(json.dumps(raw))
    return str(path)


def eagle3_tensors(config: Any, seed: int, draft_ids: list[int]) -> dict:
    """Random tensors of an EAGLE-3 head for `config` whose draft vocabulary is the target ids
    `draft_ids` (HF names; `d2t` holds target id minus draft id, `t2d` the membership mask)."""
    import torch

    torch.manual_seed(seed)
    h, inter = config.hidden_size, config.intermediate_size
    hd = h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd

    def linear(out: int, inp: int) -> Any:
        return torch.nn.Linear(inp, out, bias=False).weight.detach().clone()

    tensors = {
        "fc.weight": linear(h, 3 * h),
        "midlayer.self_attn.q_proj.weight": linear(q, 2 * h),
        "midlayer.self_attn.k_proj.weight": linear(kv, 2 * h),
        "midlayer.self_attn.v_proj.weight": linear(kv, 2 * h),
        "midlayer.self_attn.o_proj.weight": linear(h, q),
        "midlayer.mlp.gate_proj.weight": linear(inter, h),
        "midlayer.mlp.up_proj.weight": linear(inter, h),
        "midlayer.mlp.down_proj.weight": linear(h, inter),
        "lm_head.weight": torch.randn(len(draft_ids), h) * 0.3,
        "d2t": torch.tensor(draft_ids) - torch.arange(len(draft_ids)),
        "t2d": torch.zeros(config.vocab_size, dtype=torch.bool).index_fill_(0, torch.tensor(draft_ids), True),
    }
    for name in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
        tensors[f"midlayer.{name}.weight"] = torch.empty(h).uniform_(0.5, 1.5)
    tensors["norm.weight"] = torch.empty(h).uniform_(0.5, 1.5)
    return tensors


def make_eagle3_head(
    out: str | os.PathLike, target_dir: str, layer_ids: list[int], seed: int = 0, tensors: Optional[dict] = None
) -> str:
    """Save a random EAGLE-3 head for the target at `target_dir` (draft vocabulary: every other
    target id, reading the outputs of target layers `layer_ids`) into `out`."""
    config = eagle_head_config(target_dir)
    draft_ids = list(range(0, config.vocab_size, 2))
    config = eagle_head_config(
        target_dir, draft_vocab_size=len(draft_ids), eagle_config={"eagle_aux_hidden_state_layer_ids": layer_ids}
    )
    if tensors is None:
        tensors = eagle3_tensors(config, seed, draft_ids)
    return _save(out, config, tensors, "LlamaForCausalLMEagle3")


def make_small_vocab_llama(out: str | os.PathLike) -> str:
    """A tiny random Llama over 12 tokens (no tokenizer), flatter logits than the shared one:
    for chi-square tests of sampled outputs."""
    import torch
    from transformers import AutoModelForCausalLM

    from helpers.tiny_models import tiny_config

    config = tiny_config("llama", 12)
    config.initializer_range = 0.05
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(str(out))
    return str(out)
