"""`compute_logits(hidden, out)` writes the logits into a buffer the caller keeps (the CUDA
graphs share one [max_bs, vocab] buffer this way) and gives what it returns without one; the
rest of the buffer is untouched. Native Llama and the Transformers backend, on the CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from radixlm.config.server_args import ServerArgs
from radixlm.executor.model_runner import ModelRunner


@pytest.mark.parametrize("impl", ["radixlm", "transformers"])
def test_logits_into_a_shared_buffer(tiny_llama_dir: str, impl: str) -> None:
    path = tiny_llama_dir
    runner = ModelRunner(
        ServerArgs(
            model_path=path,
            device="cpu",
            dtype="float32",
            max_total_tokens=128,
            max_running_requests=2,
            model_impl=impl,
        )
    )
    hidden_size = AutoConfig.from_pretrained(path).hidden_size
    hidden = torch.randn(3, hidden_size, generator=torch.Generator().manual_seed(0))
    want = runner.model.compute_logits(hidden)
    buffer = torch.full((5, want.shape[1]), float("nan"))
    got = runner.model.compute_logits(hidden, buffer[:3])
    assert got.data_ptr() == buffer.data_ptr() and got.dtype == torch.float32
    assert torch.equal(buffer[:3], want) and buffer[3:].isnan().all()
