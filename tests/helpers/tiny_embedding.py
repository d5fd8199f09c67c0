"""A tiny embedding model for tests: the tiny Qwen3 checkpoint with a sentence-transformers
pooling config written beside it, and the reference vectors from HF transformers' hidden states."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

ST_MODE_KEYS = {"last": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}


def make_embedding_model(
    base_dir: str, out_dir: str | Path, method: str, normalize: bool, matryoshka: bool = False
) -> str:
    """Copy the model at `base_dir` to `out_dir` with `modules.json` (Transformer, Pooling and,
    with `normalize`, Normalize) and `1_Pooling/config.json` selecting `method`; `matryoshka`
    sets `is_matryoshka` in config.json. Returns the new directory."""
    out = Path(out_dir)
    shutil.copytree(base_dir, out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    pooling = {key: key == ST_MODE_KEYS[method] for key in ST_MODE_KEYS.values()}
    pooling.update(word_embedding_dimension=64, pooling_mode_max_tokens=False)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if matryoshka:
        config = json.loads((out / "config.json").read_text())
        config["is_matryoshka"] = True
        (out / "config.json").write_text(json.dumps(config))
    return str(out)


def make_base_model_checkpoint(model_dir: str) -> None:
    """Rewrite `model_dir` in place as Qwen3-Embedding ships: tensors named as the bare
    `Qwen3Model` saves them (no `model.` prefix), no `lm_head`, `tie_word_embeddings: true`."""
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / "model.safetensors"
    tensors = load_file(str(path))
    save_file({k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith("lm_head.")}, str(path))
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text())
    config["tie_word_embeddings"] = True
    config_path.write_text(json.dumps(config))


def hf_embeddings(
    model: object, prompts: list[list[int]], method: str, normalize: bool, dimensions: Optional[int] = None
) -> list[list[float]]:
    """The reference: HF's final-norm hidden states of each unpadded prompt, pooled by `method`,
    truncated to `dimensions`, then L2-normalised when `normalize`."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for ids in prompts:
            hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
            vector = {"last": hidden[-1], "mean": hidden.mean(dim=0), "cls": hidden[0]}[method]
            if dimensions is not None:
                vector = vector[:dimensions]
            out.append((F.normalize(vector, dim=-1) if normalize else vector).tolist())
    return out
