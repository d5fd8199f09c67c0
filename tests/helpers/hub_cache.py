"""A Hugging Face Hub cache laid out as `huggingface_hub` writes it, filled from a local directory.

<cache>/models--<org>--<name>/blobs/<sha256 of the file>
<cache>/models--<org>--<name>/snapshots/<commit>/<file> -> ../../blobs/<sha256>
<cache>/models--<org>--<name>/refs/<revision>            (holds <commit>)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable, Optional


def add_to_hub_cache(
    cache_dir: str | os.PathLike,
    repo_id: str,
    source_dir: str | os.PathLike,
    revision: str = "main",
    commit: Optional[str] = None,
    keep: Callable[[str], bool] = lambda name: True,
) -> str:
    """Put the files of `source_dir` accepted by `keep` into `cache_dir` as snapshot `commit` of
    `repo_id`, with ref `revision` pointing at it; returns the snapshot directory."""
    commit = commit or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for src in sorted(Path(source_dir).iterdir()):
        if not src.is_file() or not keep(src.name):
            continue
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / src.name
        if not link.exists():
            os.symlink(os.path.join("..", "..", "blobs", digest), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return str(snapshot)


def bin_checkpoint_copy(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """`model_dir` with its safetensors weights rewritten as one `pytorch_model.bin` (torch.save of
    the state dict); the other files copied as they are."""
    import torch
    from safetensors.torch import load_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state: dict = {}
    for src in sorted(Path(model_dir).iterdir()):
        if src.suffix == ".safetensors":
            state.update(load_file(str(src)))
        elif src.is_file() and not src.name.endswith(".safetensors.index.json"):
            shutil.copyfile(src, out / src.name)
    torch.save(state, out / "pytorch_model.bin")
    return str(out)
