"""KV pool sizing on a GPU (`--mem-fraction-static`): the budget is the fraction of device
memory less what is in use, the weights still to load and the logits buffers the CUDA graphs
keep. Pure arithmetic, checked on the CPU."""

from __future__ import annotations

from radixlm.cuda_graph_runner import default_buckets, logits_buffer_bytes, plan_buckets
from radixlm.model_runner import kv_pool_tokens


def test_logits_buffers_count_every_graph() -> None:
    # buckets 1, 2, 4, 8 (15 rows); the shared-prefix graphs only at 8 (8 rows)
    assert default_buckets(8) == [1, 2, 4, 8] and plan_buckets([2, 4, 8]) == [8]
    assert logits_buffer_bytes(8, 100) == (15 + 8) * 100 * 4
    # Llama-3 vocabulary at the default --cuda-graph-max-bs 256: the ~2.8 GB of the design notes
    assert 2.5e9 < logits_buffer_bytes(256, 128256) < 3.0e9


def test_pool_budget_subtracts_use_weights_and_graph_buffers() -> None:
    gib = 2**30
    tokens = kv_pool_tokens(total=80 * gib, free=79 * gib, fraction=0.5, reserved=15 * gib,
                            per_token=gib // 1024, page_size=1)
    assert tokens == (40 - 1 - 15) * 1024
    more_graphs = kv_pool_tokens(80 * gib, 79 * gib, 0.5, 15 * gib + 3 * gib, gib // 1024, 1)
    assert more_graphs == tokens - 3 * 1024


def test_pool_budget_never_below_two_pages() -> None:
    assert kv_pool_tokens(total=1 << 30, free=1 << 20, fraction=0.9, reserved=1 << 30, per_token=4096,
                          page_size=16) == 32
