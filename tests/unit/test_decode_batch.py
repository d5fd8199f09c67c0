"""The decode step's host fast paths give what the per-request code they replaced gave: one staged
copy (`to_device_split`, `to_device_rows`), the vectorized `build_decode` + `alloc_decode`/`write_slots`
(and the CUDA graph runner's one-copy input load from it), the in-place
placeholder replacement in `TokenSampler.finish`, and the shared detokenizer window lengths."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch

from radixlm.constrained.structured import build_structured_output
from radixlm.executor.cuda_graph_runner import CudaGraphRunner
from radixlm.forward.batch import ForwardMode
from radixlm.forward.device_copy import host_tensor, to_device_rows, to_device_split
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.kv_pool import ReqToTokenPool, SlotAllocator
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.batch import ScheduledBatch, build_decode
from radixlm.scheduler.request import Req
from radixlm.scheduler.text_tracker import TextTracker
from radixlm.scheduler.token_sampler import PLACEHOLDER, LaunchedBatch, TokenSampler
from radixlm.tokenizer.detokenizer import IncrementalDetokenizer, WindowDecoder

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "values, dtype",
    [
        ([3, -1, 2**40, 0], torch.int64),
        ([], torch.int64),
        ([True, False], torch.int64),
        ([0.1, -2.5, 1e40, 3.0], torch.float32),
        ([], torch.float32),
        ([True, False], torch.bool),
    ],
)
def test_host_tensor_equals_torch_tensor(values: list, dtype: torch.dtype) -> None:
    got, want = host_tensor(values, dtype), torch.tensor(values, dtype=dtype)
    assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)


def test_to_device_split_gives_each_part() -> None:
    a, b, c = [1, 2, 3], [-4], [5, 6]
    parts = to_device_split(a + b + c, (3, 1, 2), CPU)
    assert [p.tolist() for p in parts] == [a, b, c]


@pytest.mark.parametrize("sizes", [(3, 1, 2), (1, 1, 1, 1), (2, 4, 6), (5,), (0, 3, 0, 1)])
def test_to_device_split_parts_start_16_byte_aligned(sizes: tuple[int, ...]) -> None:
    """Triton compiles a kernel variant per pointer alignment: every part must start aligned,
    whatever the sizes before it."""
    values = list(range(1, sum(sizes) + 1))
    parts = to_device_split(values, sizes, CPU)
    base = parts[0].data_ptr()
    assert all((p.data_ptr() - base) % 16 == 0 for p in parts)
    assert [v for p in parts for v in p.tolist()] == values and [p.numel() for p in parts] == list(sizes)


@pytest.mark.parametrize("rows, n", [(4, 1), (4, 3), (4, 8), (2, 5), (1, 0)])
def test_to_device_rows_gives_aligned_rows(rows: int, n: int) -> None:
    values = list(range(1, rows * n + 1))
    block = to_device_rows(values, rows, CPU)
    assert block.shape == (rows, n) and block.flatten().tolist() == values
    assert all((block[r].data_ptr() - block[0].data_ptr()) % 16 == 0 for r in range(rows))


def test_to_device_rows_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError, match="equal rows"):
        to_device_rows([1, 2, 3], 2, CPU)


def make_cache(page_size: int) -> KVCacheManager:
    return KVCacheManager(SlotAllocator(2048, page_size), ReqToTokenPool(16, 256, CPU), RadixCache(page_size=page_size))


def running_reqs(cache: KVCacheManager, rng: random.Random) -> list[Req]:
    """Requests as after their prefill plus some decode steps, some ending in placeholders
    (their KV covers every token but the last, like a running request's before a decode)."""
    reqs = []
    for i in range(10):
        req = Req(
            str(i), [rng.randrange(3, 400) for _ in range(rng.randrange(1, 20))], SamplingParams(max_new_tokens=100)
        )
        cache.match(req, req.seq_len)
        assert cache.assign_row(req)
        outputs = [rng.randrange(3, 400) for _ in range(rng.randrange(0, 5))]
        pending = rng.randrange(0, 3) if outputs or i % 2 else 0
        req.output_ids = outputs + [PLACEHOLDER] * pending
        req.pending_tokens = pending
        assert cache.alloc_tokens(req, req.seq_len - 1 - req.kv_len) is not None
        reqs.append(req)
    return reqs


def reference_decode(reqs: list[Req], table: torch.Tensor, token_buf: torch.Tensor) -> dict:
    """The per-request decode batch of before (with the slots already in the table)."""
    positions = [r.seq_len - 1 for r in reqs]
    pool = torch.tensor([r.req_pool_idx for r in reqs])
    ids = torch.tensor([r.last_token for r in reqs])
    ids = torch.where(ids < 0, token_buf[pool], ids)
    return dict(
        input_ids=ids.tolist(),
        positions=positions,
        out_cache_loc=table[pool, torch.tensor(positions)].tolist(),
        req_pool_indices=pool.tolist(),
        seq_lens=[p + 1 for p in positions],
        seq_lens_cpu=[p + 1 for p in positions],
        extend_prefix_lens_cpu=positions,
        extend_seq_lens_cpu=[1] * len(reqs),
        logit_indices=list(range(len(reqs))),
    )


@pytest.mark.parametrize("page_size", [1, 4])
def test_build_decode_equals_per_request_batch(page_size: int) -> None:
    rng = random.Random(page_size)
    cache = make_cache(page_size)
    reqs = running_reqs(cache, rng)
    token_buf = torch.tensor([rng.randrange(3, 400) for _ in range(16)])
    kv_before = [r.kv_len for r in reqs]
    slots = cache.alloc_decode(reqs)
    batch = build_decode(reqs, slots, cache.req_pool.table, CPU, token_buf)
    fb = batch.forward
    cache.write_slots(fb.req_pool_indices, fb.positions, fb.out_cache_loc)
    for req, kv in zip(reqs, kv_before):
        assert req.kv_len == kv + 1 == req.seq_len
        assert cache.req_pool.table[req.req_pool_idx, : req.kv_len].tolist() == req.kv_slots  # host copy == table
    want = reference_decode(reqs, cache.req_pool.table, token_buf)
    for name, value in want.items():
        got = getattr(fb, name)
        assert (got.tolist() if isinstance(got, torch.Tensor) else got) == value, name
    assert batch.mode is fb.mode is ForwardMode.DECODE
    assert batch.reqs == batch.samplers == reqs and batch.sample_rows is None and not batch.items
    # the four per-token tensors are the rows of one block (one copy into a CUDA graph's inputs)
    rows = (fb.input_ids, fb.positions, fb.out_cache_loc, fb.req_pool_indices)
    assert torch.equal(fb.decode_inputs, torch.stack(rows))
    assert [r.data_ptr() for r in rows] == [fb.decode_inputs[i].data_ptr() for i in range(4)]


@pytest.mark.parametrize("one_block", [True, False])
def test_graph_inputs_load_in_the_static_order_and_pad(one_block: bool) -> None:
    """`CudaGraphRunner.load_inputs` (no graph needed): the batch's rows land in the static
    [4, max_bs] inputs (ids, positions, slots, table rows), rows up to the bucket are zeroed,
    rows beyond it are left alone; the same from a batch without the block (four copies)."""
    rng = random.Random(7)
    cache = make_cache(1)
    reqs = running_reqs(cache, rng)[:5]
    token_buf = torch.tensor([rng.randrange(3, 400) for _ in range(16)])
    fb = build_decode(reqs, cache.alloc_decode(reqs), cache.req_pool.table, CPU, token_buf).forward
    if not one_block:
        fb = dataclasses.replace(fb, decode_inputs=None)
    runner = object.__new__(CudaGraphRunner)
    runner.inputs = torch.full((4, 12), -7, dtype=torch.int64)
    runner.load_inputs(fb, 8)
    want = torch.stack([fb.input_ids, fb.positions, fb.out_cache_loc, fb.req_pool_indices])
    assert torch.equal(runner.inputs[:, :5], want)
    assert (runner.inputs[:, 5:8] == 0).all() and (runner.inputs[:, 8:] == -7).all()


def test_shared_window_decoder_changes_no_delta(tiny_tokenizer) -> None:
    rng = random.Random(0)
    shared = WindowDecoder(tiny_tokenizer)
    for _ in range(20):
        ids = [rng.randrange(0, 400) for _ in range(30)]
        own, common = IncrementalDetokenizer(tiny_tokenizer), IncrementalDetokenizer(tiny_tokenizer, decoder=shared)
        assert [own.append([t]) for t in ids] == [common.append([t]) for t in ids]
        assert own.flush() == common.flush() and own.text == common.text
    for token in range(400):
        assert shared.text_len([token]) == len(shared.decode([token]))


def finish_both_ways(tiny_tokenizer, reqs: list[Req], tokens: list[int]) -> list[tuple]:
    """Finish one decode batch with the fast path and, on copies, with `_append_sampled` (the general
    path); returns both outcomes per request, text as the request would be sent it (streaming
    requests' incremental text, the others' text decoded at the end once finished)."""
    ways = []
    for fast in (True, False):
        text = TextTracker(tiny_tokenizer, {1}, context_len=40)
        out = TokenSampler(text, build_structured_output(tiny_tokenizer, 400, {1}, False), 400, {1}, CPU)
        batch_reqs = copy.deepcopy(reqs)
        for req in batch_reqs:
            text.init_req(req)
            for token in req.output_ids[: len(req.output_ids) - req.pending_tokens]:
                if req.detok is not None:
                    req.detok.append([token])
        launched = LaunchedBatch(
            ScheduledBatch(ForwardMode.DECODE, batch_reqs, None, batch_reqs, None), None, batch_reqs, None, list
        )
        if fast:
            out.finish(launched, tokens)
        else:
            for req, token in zip(batch_reqs, tokens):
                out._append_sampled(req, token, None)
        ways.append([(r.output_ids, r.pending_tokens, r.finished_reason, text.visible_text(r)) for r in batch_reqs])
    return ways


def test_finish_in_place_equals_general_path(tiny_tokenizer) -> None:
    rng = random.Random(1)
    reqs, tokens = [], []
    for i in range(200):
        params = SamplingParams(
            max_new_tokens=rng.choice([1, 3, 6, 100]),
            ignore_eos=i % 3 == 0,
            stop_token_ids=[7, 8] if i % 4 == 0 else None,
        )
        req = Req(
            str(i), [rng.randrange(3, 400) for _ in range(rng.choice([3, 30, 38]))], params, stream=i % 2 == 0
        )  # streaming: text token by token; else decoded once at the end
        done = rng.randrange(0, 4)
        req.pending_tokens = rng.randrange(1, 4)
        req.output_ids = [rng.randrange(3, 400) for _ in range(done)] + [PLACEHOLDER] * req.pending_tokens
        reqs.append(req)
        tokens.append(rng.choice([1, 7, 8, rng.randrange(3, 400)]))
    fast, general = finish_both_ways(tiny_tokenizer, reqs, tokens)
    assert fast == general
    assert {r[2].to_json()["type"] for r in fast if r[2]} == {"stop", "length"} and any(r[2] is None for r in fast)
