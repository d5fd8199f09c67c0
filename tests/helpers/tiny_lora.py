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
