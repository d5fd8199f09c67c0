"""KV pool sizing on a GPU (`--mem-fraction-static`): the budget is the fraction of device
memory less what is in use, the weights still to load and the logits buffers the CUDA graphs
keep. Pure arithmetic, checked on the CPU."""

from __future__ import annotations

from radixlm.executor.cuda_graph_runner import logits_buffer_bytes
from radixlm.executor.model_runner import kv_pool_tokens


def test_one_logits_buffer_for_every_graph() -> None:
    assert logits_buffer_bytes(8, 100) == 8 * 100 * 4
    # Llama-3 vocabulary at the default --cuda-graph-max-bs 256: 131 MB (one buffer per graph
    # was ~2.8 GB, the figure in the design notes)
    assert logits_buffer_bytes(256, 128256) == 256 * 128256 * 4


def test_pool_budget_subtracts_use_weights_and_graph_buffers() -> None:
    gib = 2**30
    tokens = kv_pool_tokens(
        total=80 * gib, free=79 * gib, fraction=0.5, reserved=15 * gib, per_token=gib // 1024, page_size=1
    )
    assert tokens == (40 - 1 - 15) * 1024
    more_graphs = kv_pool_tokens(80 * gib, 79 * gib, 0.5, 15 * gib + 3 * gib, gib // 1024, 1)
    assert more_graphs == tokens - 3 * 1024


def test_pool_budget_never_below_two_pages() -> None:
    assert (
        kv_pool_tokens(total=1 << 30, free=1 << 20, fraction=0.9, reserved=1 << 30, per_token=4096, page_size=16) == 32
    )
