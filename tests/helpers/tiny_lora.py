"""Tiny PEFT LoRA adapters for the tiny random models, built in-test with `peft`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def make_adapter(
    base_dir: str, out_dir: str | os.PathLike, rank: int, targets: Sequence[str], seed: int, alpha: int = 16, **extra
) -> str:
    """Save a LoRA adapter of `rank` on `targets` for the model at `base_dir` and return its
    directory. PEFT starts lora_B at zero (a no-op adapter); both A and B are drawn at random
    here so the adapter changes the greedy tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), **extra))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    return str(out)


def load_hf_with_adapter(base_dir: str, adapter_dir: str) -> object:
    """HF transformers + peft reference: the base model with the adapter applied, eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.generation_config.eos_token_id = None
    return PeftModel.from_pretrained(base, adapter_dir).eval()


# Shared by the Engine and HTTP LoRA tests: prompts (token ids of the tiny Llama), greedy length,
# and adapters {name: (rank, target modules, seed, extra LoraConfig fields)}. A: rank 8 on attention;
# B: rank 4 on the MLP plus v_proj; C (loaded at run time): rank 2 on o_proj; D: rank 4 rsLoRA
# (scaled by alpha / sqrt(r)) on q_proj and down_proj.
PROMPTS = ([5, 17, 33, 99, 120, 7], [201, 3, 88, 45, 10, 11, 12, 300, 250])
NEW = 10
ADAPTERS = {
    "A": (8, ["q_proj", "k_proj", "v_proj", "o_proj"], 1, {}),
    "B": (4, ["gate_proj", "up_proj", "down_proj", "v_proj"], 2, {}),
    "C": (2, ["o_proj"], 3, {}),
    "D": (4, ["q_proj", "down_proj"], 4, {"use_rslora": True}),
}


def lora_references(base_dir: str, out_dir: str | os.PathLike) -> tuple[dict[str, str], dict]:
    """Build ADAPTERS under `out_dir`; returns ({name: directory}, {(name or None, prompt index):
    HF + peft greedy tokens of NEW tokens}) for every adapter and the base model (None)."""
    from helpers.tiny_models import hf_greedy, load_hf_model

    paths = {
        name: make_adapter(base_dir, Path(out_dir) / name, r, t, seed, **extra)
        for name, (r, t, seed, extra) in ADAPTERS.items()
    }
    models: dict = {name: load_hf_with_adapter(base_dir, path) for name, path in paths.items()}
    models[None] = load_hf_model(base_dir)
    refs = {(name, i): hf_greedy(m, p, NEW) for name, m in models.items() for i, p in enumerate(PROMPTS)}
    return paths, refs
