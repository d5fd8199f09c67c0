"""KV pool sizing from measured memory (`radixlm.executor.memory_profile`): the warm-up prefill's
shape, the budget once the warm-up's activation peak and the CUDA graphs' logits are held back,
and a warm-up batch that the model really runs. Everything here runs on the CPU; the CUDA
measurement itself (`measure_after_warmup`) needs a GPU."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import make_tiny_model

from radixlm.config.server_args import ServerArgs
from radixlm.executor.memory_profile import (
    MemoryProfile,
    kv_pool_tokens,
    pool_tokens_from_profile,
    warmup_batch,
    warmup_shape,
)
from radixlm.executor.model_runner import ModelRunner, _release

GIB = 2**30


@pytest.mark.parametrize(
    "max_prefill, chunk, context, max_running, expected",
    [
        (16384, None, 4096, 256, (5, 4095)),  # prompts are shorter than the context: rounded up
        (16384, None, 32768, 256, (1, 16384)),  # one prompt fills the batch
        (8192, 2048, 32768, 256, (4, 2048)),  # chunks of 2048, four of them fit
        (8192, 2048, 32768, 2, (2, 2048)),  # no more requests than may run
        (100, 64, 32768, 8, (2, 64)),  # the last request is only partly needed: rounded up
        (4, None, 1, 8, (4, 1)),  # degenerate context: one token each
    ],
)
def test_warmup_is_the_largest_prefill(
    max_prefill: int, chunk: int | None, context: int, max_running: int, expected: tuple[int, int]
) -> None:
    assert warmup_shape(max_prefill, chunk, context, max_running) == expected


def test_budget_holds_back_use_activations_and_graph_logits() -> None:
    profile = MemoryProfile(total=80 * GIB, free=60 * GIB, activation_peak=3 * GIB)
    per_token = GIB // 1024
    tokens = pool_tokens_from_profile(profile, 0.9, graph_bytes=GIB, per_token=per_token, page_size=1)
    assert tokens == (72 - 20 - 3 - 1) * 1024
    assert tokens == kv_pool_tokens(80 * GIB, 60 * GIB, 0.9, 4 * GIB, per_token, 1)
    no_graphs = pool_tokens_from_profile(profile, 0.9, 0, per_token, 1)
    assert no_graphs - tokens == 1024
    bigger_peak = pool_tokens_from_profile(MemoryProfile(80 * GIB, 60 * GIB, 5 * GIB), 0.9, GIB, per_token, 1)
    assert tokens - bigger_peak == 2 * 1024


def test_budget_never_below_two_pages() -> None:
    profile = MemoryProfile(total=GIB, free=GIB // 10, activation_peak=GIB)
    assert pool_tokens_from_profile(profile, 0.5, 0, 4096, page_size=16) == 32


def test_warmup_batch_is_a_consistent_prefill() -> None:
    table = torch.zeros((4, 16), dtype=torch.int64)
    batch = warmup_batch(table, requests=3, length=5, device=torch.device("cpu"))
    assert batch.input_ids.shape == batch.positions.shape == batch.out_cache_loc.shape == (15,)
    assert batch.positions.tolist() == list(range(5)) * 3
    assert batch.seq_lens_cpu == batch.extend_seq_lens_cpu == [5, 5, 5] and batch.extend_prefix_lens_cpu == [0] * 3
    assert batch.logit_indices.tolist() == [4, 9, 14]
    slots = batch.out_cache_loc.view(3, 5)
    assert torch.equal(table[:3, :5], slots) and slots.min() == 1 and len(set(slots.flatten().tolist())) == 15
    assert not table[3].any() and not table[:, 5:].any()


def test_runner_binds_the_backend_to_its_pool_and_runs_the_warmup(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = make_tiny_model(tmp_path_factory.mktemp("profile"), "llama")
    runner = ModelRunner(
        ServerArgs(model_path=path, device="cpu", dtype="float32", max_total_tokens=128, max_running_requests=4)
    )
    assert runner.warmup_prefill is None and runner.backend.pool is runner.pool and runner.pool.size == 128
    batch = warmup_batch(runner.req_to_token_pool.table, 2, 7, runner.device)
    logits = runner.forward(batch)
    assert logits.shape == (2, runner.vocab_size) and torch.isfinite(logits).all()
    assert torch.equal(logits[0], logits[1])  # the same prompt in two rows
    runner.warmup_prefill = (2, 7)  # what CUDA sizing runs, here on the CPU over the bound pool
    runner._warmup_forward()
    assert not runner.req_to_token_pool.table.any()  # the warm-up leaves no table rows behind
    scratch = runner._new_pool(32)
    _release(scratch)
    assert scratch.k_buffers == [] and scratch.v_buffers == []
