"""The CPU attention backend's decode against the torch-native reference (SDPA over gathered K/V)."""

from __future__ import annotations

import pytest
import torch

from radixlm.attention.cpu_backend import CpuBackend, _contiguous_run
from radixlm.attention.torch_native import TorchNativeBackend
from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.mem_cache.kv_pool import KVPool

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 6, 2, 16, 2


def _pool(dtype: torch.dtype) -> KVPool:
    pool = KVPool(400, 1, LAYERS, KV_HEADS, HEAD_DIM, dtype, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for buf in pool.k_buffers + pool.v_buffers:
        buf.copy_(torch.randn(buf.shape, generator=gen).to(dtype))
    return pool


def _decode_batch(rows: list[list[int]]) -> ForwardBatch:
    """Request i holds slots rows[i] (its last slot is the new token's)."""
    table = torch.zeros((len(rows) + 1, max(128, max(map(len, rows)))), dtype=torch.int64)
    for i, row in enumerate(rows):
        table[i, : len(row)] = torch.tensor(row)
    lens = [len(r) for r in rows]
    return ForwardBatch(
        ForwardMode.DECODE,
        input_ids=torch.zeros(len(rows), dtype=torch.int64),
        positions=torch.tensor(lens) - 1,
        out_cache_loc=torch.tensor([r[-1] for r in rows]),
        req_pool_indices=torch.arange(len(rows)),
        seq_lens=torch.tensor(lens),
        seq_lens_cpu=lens,
        extend_prefix_lens_cpu=[n - 1 for n in lens],
        extend_seq_lens_cpu=[1] * len(rows),
        logit_indices=torch.arange(len(rows)),
        req_to_token=table,
    )


def _attend(backend: TorchNativeBackend, batch: ForwardBatch, q: torch.Tensor) -> list[torch.Tensor]:
    backend.init_forward_metadata(batch)
    return [backend.forward(q, layer, HEAD_DIM**-0.5, batch) for layer in range(LAYERS)]


CASES = {
    "one request, contiguous (read in place)": [list(range(5, 78))],
    "one request, two runs (a cached prefix)": [list(range(200, 240)) + list(range(9, 30))],
    "one request, one token": [[17]],
    "a batch of unequal lengths": [list(range(1, 40)), list(range(100, 103)), [390, 7, 250, 8]],
}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("case", list(CASES))
def test_decode_matches_the_reference(case: str, dtype: torch.dtype, tol: float) -> None:
    rows = CASES[case]
    pool = _pool(dtype)
    q = torch.randn(len(rows), HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = _attend(TorchNativeBackend(pool), _decode_batch(rows), q)
    got = _attend(CpuBackend(pool), _decode_batch(rows), q)
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.allclose(g.float(), w.float(), atol=tol, rtol=tol), (g - w).abs().max()


def test_only_a_single_contiguous_request_is_read_in_place() -> None:
    assert _contiguous_run(_decode_batch(CASES["one request, contiguous (read in place)"])) is not None
    assert _contiguous_run(_decode_batch(CASES["one request, two runs (a cached prefix)"])) is None
    assert _contiguous_run(_decode_batch([[3, 5, 4, 6]])) is None  # same span, out of order
    assert _contiguous_run(_decode_batch(CASES["a batch of unequal lengths"])) is None
