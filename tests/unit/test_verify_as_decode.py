"""A speculative verify step run as a decode of one row per token (what the decode CUDA graphs
run) gives the logits of the same step run as an extend, and both equal a from-scratch forward
of each request's whole sequence: the draft rows see the rows before them and none after."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from radixlm.speculative.args import DEFAULT_DRAFTS
from radixlm.speculative.verify_batch import build_verify, build_verify_as_decode, can_verify_as_decode


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from transformers import LlamaConfig

    from radixlm.config.server_args import ServerArgs
    from radixlm.executor.model_runner import ModelRunner

    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    ).save_pretrained(path)
    torch.manual_seed(0)
    args = ServerArgs(
        model_path=str(path),
        load_format="dummy",
        device="cpu",
        dtype="float32",
        max_total_tokens=2048,
        max_running_requests=8,
        context_length=256,
        num_threads=1,
        log_level="warning",
    )
    return ModelRunner(args)


class FakeReq(SimpleNamespace):
    """What the verify builders read of a request: its ids, KV slots and table row."""

    def fill_slice(self, start: int, end: int) -> list[int]:
        return self.ids[start:end]


def make_req(runner, row: int, ids: list[int], first_slot: int) -> FakeReq:
    slots = list(range(first_slot, first_slot + len(ids) + 16))
    runner.req_to_token_pool.table[row, : len(slots)] = torch.tensor(slots)
    return FakeReq(ids=ids, seq_len=len(ids), kv_slots=slots, req_pool_idx=row, lora_uid=0, images=None)


def prefill(runner, reqs: list[FakeReq], lens: list[int]) -> torch.Tensor:
    """Run each request's first `lens[i]` tokens as one extend from empty KV; the logits of all rows."""
    for req, n in zip(reqs, lens):
        req.seq_len = n
    table = runner.req_to_token_pool.table
    batch = build_verify(reqs, [0] * len(reqs), [[] for _ in reqs], table, runner.device)
    fb = batch.forward
    fb.logit_indices = torch.arange(sum(lens))
    return runner.forward(fb)


def test_decode_shaped_verify_equals_extend_and_scratch(runner):
    gen = torch.Generator().manual_seed(1)
    contexts = [[int(t) for t in torch.randint(1, 256, (n,), generator=gen)] for n in (9, 23, 5)]
    drafts = [[7, 8, 9, 10], [], [200, 3]]
    reqs = [make_req(runner, i + 1, ctx + chain, 1 + 64 * i) for i, (ctx, chain) in enumerate(zip(contexts, drafts))]
    table = runner.req_to_token_pool.table

    full = prefill(runner, reqs, [len(ctx) + len(chain) for ctx, chain in zip(contexts, drafts)])
    wanted, offset = [], 0
    for ctx, chain in zip(contexts, drafts):
        last = offset + len(ctx) - 1
        wanted.append(full[last : last + len(chain) + 1])
        offset += len(ctx) + len(chain)
    scratch = torch.cat(wanted)

    results = {}
    for name, build in (("extend", build_verify), ("decode", build_verify_as_decode)):
        prefill(runner, reqs, [len(ctx) - 1 for ctx in contexts])  # KV of all but the last token
        for req, ctx in zip(reqs, contexts):
            req.seq_len = len(ctx)
        starts = [len(ctx) - 1 for ctx in contexts]
        assert can_verify_as_decode(reqs, starts)
        batch = build(reqs, starts, drafts, table, runner.device)
        assert batch.forward.mode.name == ("DECODE" if name == "decode" else "EXTEND")
        results[name] = runner.forward(batch.forward).clone()
    assert results["decode"].shape == scratch.shape == (sum(len(c) + 1 for c in drafts), 256)
    torch.testing.assert_close(results["extend"], scratch, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results["decode"], scratch, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results["decode"], results["extend"], atol=1e-5, rtol=1e-5)


def test_decode_shaped_verify_needs_one_token_without_kv(runner):
    req = make_req(runner, 5, [1, 2, 3, 4, 5], 400)
    assert not can_verify_as_decode([req], [2])  # two tokens without KV (after a jump-forward)
    with pytest.raises(ValueError, match="one token without KV"):
        build_verify_as_decode([req], [2], [[6]], runner.req_to_token_pool.table, runner.device)


def test_speculation_builds_the_triton_backend_for_rows_per_request(runner, monkeypatch) -> None:
    """Decode rows of one request read each other's K/V: with speculation on, the runner asks for
    a backend taking 1 + drafts rows per request, which the Triton backend scores together
    (`verify_attention`); without, one row per request."""
    pytest.importorskip("triton")
    import dataclasses

    import radixlm.executor.model_runner as model_runner
    from radixlm.attention.registry import create_attention_backend
    from radixlm.executor.model_runner import ModelRunner

    asked: list[int] = []

    def recording(name, pool, device, rows_per_request=1):  # noqa: ANN001, ANN202
        asked.append(rows_per_request)
        return create_attention_backend(name, pool, device, rows_per_request)

    monkeypatch.setattr(model_runner, "create_attention_backend", recording)
    ngram = {"speculative_algorithm": "NGRAM"}
    for spec in ({}, ngram, {**ngram, "speculative_num_steps": 3}):
        ModelRunner(dataclasses.replace(runner.args, **spec))
    assert asked == [1, DEFAULT_DRAFTS["NGRAM"] + 1, 4]
    pool = runner.pool
    assert create_attention_backend("triton", pool, runner.device, 5).rows_per_request == 5
    assert create_attention_backend("triton", pool, runner.device).rows_per_request == 1
    with pytest.raises(ValueError, match="rows_per_request"):
        create_attention_backend("triton", pool, runner.device, 0)
