"""`--enable-torch-compile`: a decode forward traced by torch.compile equals the eager one.

Without a GPU the trace runs through AOT autograd with the eager backend (`aot_eager`): the
same dynamo graph capture and functionalization inductor would get, without generating code
(inductor on 2 CPU cores takes minutes). On a GPU, the Engine compiles with inductor and
captures the compiled forwards in CUDA graphs; its greedy tokens must equal the eager engine's.
"""

from __future__ import annotations

import pytest
import torch

import radixlm
from radixlm.config.server_args import ServerArgs
from radixlm.executor.model_compile import compile_forward, native_layers
from radixlm.executor.model_runner import ModelRunner
from radixlm.forward.batch import ForwardBatch, ForwardMode


@pytest.fixture(scope="module")
def model_path(tiny_llama_dir: str) -> str:
    return tiny_llama_dir


def _batches(runner: ModelRunner, prompt_len: int, bs: int) -> tuple[ForwardBatch, ForwardBatch]:
    """A prefill of `bs` prompts of `prompt_len` tokens, then one decode step for each."""
    table, dev = runner.req_to_token_pool.table, dict(dtype=torch.int64)
    n = prompt_len + 1
    for r in range(bs):
        table[r + 1, :n] = torch.arange(1 + r * n, 1 + (r + 1) * n)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, runner.vocab_size, (bs * prompt_len,), generator=gen)
    rows = torch.arange(1, bs + 1, **dev)
    prefill = ForwardBatch(
        ForwardMode.EXTEND,
        ids,
        torch.arange(prompt_len, **dev).repeat(bs),
        table[1 : bs + 1, :prompt_len].reshape(-1),
        rows,
        torch.full((bs,), prompt_len, **dev),
        [prompt_len] * bs,
        [0] * bs,
        [prompt_len] * bs,
        torch.arange(prompt_len - 1, bs * prompt_len, prompt_len, **dev),
        table,
    )
    decode = ForwardBatch(
        ForwardMode.DECODE,
        torch.randint(3, runner.vocab_size, (bs,), generator=gen),
        torch.full((bs,), prompt_len, **dev),
        table[1 : bs + 1, prompt_len],
        rows,
        torch.full((bs,), n, **dev),
        [n] * bs,
        [prompt_len] * bs,
        [1] * bs,
        torch.arange(bs, **dev),
        table,
    )
    return prefill, decode


def test_compiled_decode_forward_equals_eager(model_path: str) -> None:
    runner = ModelRunner(
        ServerArgs(model_path=model_path, device="cpu", dtype="float32", max_total_tokens=512, max_running_requests=4)
    )
    prefill, decode = _batches(runner, 9, 3)
    runner.forward(prefill)
    eager = runner.forward(decode)
    torch._dynamo.reset()
    compiled = compile_forward(runner.model, runner.backend, backend="aot_eager")
    runner.backend.init_forward_metadata(decode)
    hidden = compiled(decode.input_ids, decode.positions, decode)
    assert "forward" not in vars(runner.backend) and "rotate_and_store" not in vars(runner.backend)  # restored
    logits = runner.model.compute_logits(hidden)
    torch.testing.assert_close(logits, eager, rtol=1e-5, atol=1e-5)


def test_native_layers_switches_and_restores(model_path: str) -> None:
    runner = ModelRunner(
        ServerArgs(model_path=model_path, device="cpu", dtype="float32", max_total_tokens=256, max_running_requests=2)
    )
    layer = runner.model.model.layers[0]
    before = (layer.input_layernorm._impl, layer.mlp.act)
    with native_layers(runner.model):
        assert layer.input_layernorm._impl == layer.input_layernorm._eager
        assert layer.mlp.act.__name__ == "silu_and_mul"
    assert (layer.input_layernorm._impl, layer.mlp.act) == before


def test_torch_compile_max_bs_is_checked() -> None:
    with pytest.raises(ValueError, match="torch_compile_max_bs"):
        ServerArgs(model_path="x", torch_compile_max_bs=0)


def test_torch_compile_without_cuda_graphs_is_refused_at_start_up(model_path: str) -> None:
    """On the CPU (no CUDA graphs to compile for) the flag is an error naming it, never ignored."""
    args = ServerArgs(
        model_path=model_path, device="cpu", enable_torch_compile=True, max_total_tokens=64, max_running_requests=2
    )
    with pytest.raises(ValueError, match="--enable-torch-compile applies to CUDA-graph decode only"):
        ModelRunner(args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_cuda_graphs_match_eager_on_gpu(model_path: str) -> None:
    """Buckets up to torch_compile_max_bs replay a compiled forward: its logits equal the eager
    forward's within float32 rounding (inductor reorders reductions), the bigger ones exactly."""
    runner = ModelRunner(
        ServerArgs(
            model_path=model_path,
            dtype="float32",
            enable_torch_compile=True,
            torch_compile_max_bs=2,
            cuda_graph_max_bs=4,
            max_running_requests=4,
            max_total_tokens=4096,
            log_level="warning",
        )
    )
    for bs, tol in ((2, 1e-4), (3, 0.0)):
        prefill, decode = (_to_cuda(b) for b in _batches(runner, 9, bs))
        runner.forward(prefill)
        graph = runner.forward(decode).clone()
        runner.backend.init_forward_metadata(decode)
        eager = runner.model.compute_logits(runner.model(decode.input_ids, decode.positions, decode))
        torch.testing.assert_close(graph, eager, rtol=tol, atol=tol)
    del runner
    torch.cuda.empty_cache()
    with radixlm.Engine(
        model_path,
        dtype="float32",
        enable_torch_compile=True,
        torch_compile_max_bs=4,
        cuda_graph_max_bs=8,
        max_running_requests=8,
        log_level="warning",
    ) as engine:
        out = engine.generate(input_ids=[5, 6, 7, 8], sampling_params={"max_new_tokens": 8, "ignore_eos": True})
    assert len(out["output_ids"]) == 8


def _to_cuda(batch: ForwardBatch) -> ForwardBatch:
    fields = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()}
    return ForwardBatch(**fields)
