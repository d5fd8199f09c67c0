"""The tokenizer_path the info routes report is one a client can load (GGUF: the exported copy)."""

from __future__ import annotations

import pytest

from radixlm.config.server_args import ServerArgs
from radixlm.entrypoints.http.tokenizer_path import loadable_tokenizer_path
from radixlm.tokenizer.loader import gguf_tokenizer_cache_path


def test_directory_models_report_their_directory(tiny_llama_dir: str, tiny_tokenizer_dir: str) -> None:
    assert loadable_tokenizer_path(ServerArgs(model_path=tiny_llama_dir)) == tiny_llama_dir
    args = ServerArgs(model_path=tiny_llama_dir, tokenizer_path=tiny_tokenizer_dir)
    assert loadable_tokenizer_path(args) == tiny_tokenizer_dir


def test_gguf_reports_the_exported_tokenizer_directory(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADIXLM_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    args = ServerArgs(model_path=str(gguf))
    assert loadable_tokenizer_path(args) is None  # never exported: nothing loadable to report
    exported = gguf_tokenizer_cache_path(str(gguf))
    exported.mkdir(parents=True)
    (exported / "tokenizer_config.json").write_text("{}")
    assert loadable_tokenizer_path(args) == str(exported)
