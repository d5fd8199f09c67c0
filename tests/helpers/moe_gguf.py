"""Write a tiny HF MoE checkpoint (Mixtral or Qwen2-MoE) as a float32 GGUF file laid out as
llama.cpp's converter writes it: Mixtral as arch `llama` with `expert_count` (q/k rows permuted
for GGML's rope), Qwen2-MoE as `qwen2moe`; experts stacked (`ffn_{gate,up,down}_exps`), the
router as `ffn_gate_inp`, the shared expert as `ffn_*_shexp` and its gate as the vector
`ffn_gate_inp_shexp`. Layers without experts keep `ffn_gate` / `ffn_up` / `ffn_down`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

_GGUF_ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe"}
_ATTENTION = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
_SHARED = {"gate_proj": "ffn_gate_shexp", "up_proj": "ffn_up_shexp", "down_proj": "ffn_down_shexp"}
_DENSE = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_EXPERT_PROJ = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def permute_for_ggml(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's layout of Q/K rows: inside each head, HF row r * d/2 + j becomes row 2j + r."""
    half = rows.shape[0] // n_head // 2
    return rows.reshape(n_head, 2, half, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def write_moe_gguf(model_dir: str, out: Path) -> str:
    """The GGUF file of the MoE checkpoint in `model_dir` (see the module docstring)."""
    from gguf import GGUFWriter
    from safetensors.torch import load_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    arch = _GGUF_ARCH[config["model_type"]]
    writer = GGUFWriter(str(out), arch)
    _write_metadata(writer, config)
    for name, value in _gguf_tensors(config, arch, load_file(str(Path(model_dir) / "model.safetensors"))):
        writer.add_tensor(name, np.ascontiguousarray(value.float().numpy()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(out)


def _write_metadata(writer: object, config: dict) -> None:
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_expert_count(config.get("num_local_experts") or config["num_experts"])
    writer.add_expert_used_count(config["num_experts_per_tok"])
    if config["model_type"] == "qwen2_moe":
        writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
        writer.add_expert_shared_feed_forward_length(config["shared_expert_intermediate_size"])
        writer.add_expert_weights_norm(config["norm_topk_prob"])


def _gguf_tensors(config: dict, arch: str, state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    out = [
        ("token_embd.weight", state["model.embed_tokens.weight"]),
        ("output_norm.weight", state["model.norm.weight"]),
        ("output.weight", state["lm_head.weight"]),
    ]
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, value in state.items():
        if not name.startswith("model.layers."):
            continue
        layer, rest = name[len("model.layers.") :].split(".", 1)
        blk = f"blk.{layer}"
        module, _, kind = rest.rpartition(".")
        leaf = module.rsplit(".", 1)[-1]
        if module.startswith("self_attn.") and leaf in _ATTENTION:
            if arch == "llama" and leaf in heads:
                value = permute_for_ggml(value, heads[leaf])
            out.append((f"{blk}.{_ATTENTION[leaf]}.{kind}", value))
        elif module in ("input_layernorm", "post_attention_layernorm"):
            out.append((f"{blk}.{'attn_norm' if module == 'input_layernorm' else 'ffn_norm'}.weight", value))
        elif ".experts." in module:
            expert = int(module.split(".experts.")[1].split(".")[0])
            experts.setdefault((int(layer), _EXPERT_PROJ[leaf]), {})[expert] = value
        elif module.endswith("shared_expert_gate"):
            out.append((f"{blk}.ffn_gate_inp_shexp.weight", value.reshape(-1)))
        elif module.endswith(".gate"):
            out.append((f"{blk}.ffn_gate_inp.weight", value))
        elif ".shared_expert." in module:
            out.append((f"{blk}.{_SHARED[leaf]}.weight", value))
        else:
            out.append((f"{blk}.{_DENSE[leaf]}.weight", value))
    for (layer, proj), by_expert in experts.items():
        out.append((f"blk.{layer}.ffn_{proj}_exps.weight", torch.stack([by_expert[e] for e in sorted(by_expert)])))
    return out
