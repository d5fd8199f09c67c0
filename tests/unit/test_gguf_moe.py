"""GGUF MoE checkpoints (Mixtral as llama.cpp's `llama` with experts, `qwen2moe`), written in-test
from the tiny HF models: the config read back has the same MoE settings and the native model
built from the GGUF has exactly the weights of the one built from safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers.moe_gguf import write_moe_gguf

from radixlm.model_loader.loader import build_model, load_model_config


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_gguf_moe_loads_the_safetensors_weights(tiny_model: Callable[[str], str], arch: str, tmp_path: Path) -> None:
    hf_dir = tiny_model(arch)
    gguf_path = write_moe_gguf(hf_dir, tmp_path / f"{arch}.gguf")
    ref_config, config = load_model_config(hf_dir), load_model_config(gguf_path)
    assert config.architectures == ref_config.architectures
    model = build_model(config, None, gguf_path, "auto", torch.float32, torch.device("cpu"))
    assert model.moe_config(config) == model.moe_config(ref_config)
    if arch == "qwen2_moe":
        assert config.mlp_only_layers == ref_config.mlp_only_layers == [1]
        assert config.qkv_bias and not getattr(config, "attention_bias", False)
    ours = dict(model.named_parameters())
    ref = dict(build_model(ref_config, None, hf_dir, "auto", torch.float32, torch.device("cpu")).named_parameters())
    assert set(ours) == set(ref)
    assert any(".experts.w13_weight" in name for name in ours)
    for name, value in ref.items():
        assert torch.equal(ours[name], value), name
