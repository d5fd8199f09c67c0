"""The batched grammar mask (one bitmask for the batch, one masking kernel) against masking each
constrained request on its own: the same masked logits and the same greedy tokens, step by step."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.spec import GrammarSpec
from radixlm.constrained.structured import build_structured_output
from radixlm.sampling.sampler import apply_vocab_mask
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.request import Req

EOS = 1
PAD = 8  # the model's vocabulary is padded past the tokenizer's
SPECS = (
    GrammarSpec("regex", "[a-z]{1,10}( [a-z]{1,6}){0,4}"),
    GrammarSpec("json_schema", json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}})),
    GrammarSpec("regex", "(yes|no|maybe)[0-9]{1,3}"),
)


def batch(tiny_tokenizer: Any, backend: str) -> list[Req]:
    """Five requests: rows 0, 2 and 4 constrained, rows 1 and 3 free."""
    router = GrammarRouter(backend, tiny_tokenizer, len(tiny_tokenizer) + PAD, {EOS})
    reqs = [Req(f"r{i}", [5, 6], SamplingParams()) for i in range(5)]
    for req, spec in zip(reqs[::2], SPECS):
        chosen = router.resolve(spec)
        req.grammar = chosen.new_grammar(chosen.compile(spec))
    return reqs


def one_by_one(reqs: list[Req], logits: torch.Tensor, tokenizer_vocab: int) -> torch.Tensor:
    """Each constrained row masked alone (its own zeroed bitmask, padding ids banned)."""
    out = logits.clone()
    for i, req in enumerate(reqs):
        if req.grammar is None:
            continue
        bitmask = torch.zeros(1, (logits.shape[-1] + 31) // 32, dtype=torch.int32)
        req.grammar.fill_vocab_mask(bitmask, 0)
        row = apply_vocab_mask(logits[i : i + 1].clone(), bitmask, torch.tensor([0]))
        row[0, tokenizer_vocab:] = float("-inf")
        out[i] = row[0]
    return out


@pytest.mark.parametrize("backend", ("xgrammar", "llguidance"))
def test_batched_mask_equals_per_request_masks(tiny_tokenizer: Any, backend: str) -> None:
    vocab = len(tiny_tokenizer) + PAD
    structured = build_structured_output(tiny_tokenizer, vocab, {EOS}, False)
    reqs = batch(tiny_tokenizer, backend)
    gen = torch.Generator().manual_seed(0)
    constrained_steps = 0
    for _ in range(40):
        logits = torch.randn(len(reqs), vocab, generator=gen)
        before = logits.clone()
        expected = one_by_one(reqs, logits, len(tiny_tokenizer))
        masked = structured.mask_logits(reqs, logits)
        assert torch.equal(logits, before)  # a masked copy, the input untouched
        assert torch.equal(masked, expected)
        assert torch.equal(masked[1], logits[1]) and torch.equal(masked[3], logits[3])
        tokens = masked.argmax(-1).tolist()
        assert tokens == expected.argmax(-1).tolist()
        for i, (req, token) in enumerate(zip(reqs, tokens)):
            if req.grammar is None:
                continue
            constrained_steps += 1
            assert torch.isinf(masked[i, : len(tiny_tokenizer)]).any()  # the grammar did narrow the choice
            assert req.grammar.accept_token(token)
            if req.grammar.is_terminated():
                req.grammar = None
        if all(req.grammar is None for req in reqs):
            break
    assert constrained_steps >= 8
    free = torch.zeros(1, vocab)
    assert structured.mask_logits(reqs[1:2], free) is free  # no grammar in the batch: no mask stage


def test_warm_up_leaves_the_counters_alone(tiny_tokenizer: Any) -> None:
    vocab = len(tiny_tokenizer) + PAD
    structured = build_structured_output(tiny_tokenizer, vocab, {EOS}, False)
    structured.warm_up(vocab)  # on CUDA this compiles the kernel; here it runs the CPU one
    assert structured.seconds == 0.0 and structured.masked_steps == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mask_equals_cpu_mask(tiny_tokenizer: Any) -> None:
    """The pinned copy and the Triton kernel give the CPU path's masked logits, step by step."""
    vocab = len(tiny_tokenizer) + PAD
    cpu = build_structured_output(tiny_tokenizer, vocab, {EOS}, False)
    cuda = build_structured_output(tiny_tokenizer, vocab, {EOS}, False, torch.device("cuda"))
    reqs = batch(tiny_tokenizer, "xgrammar")
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        logits = torch.randn(len(reqs), vocab, generator=gen)
        expected = cpu.mask_logits(reqs, logits)
        assert torch.equal(cuda.mask_logits(reqs, logits.cuda()).cpu(), expected)
        for req, token in zip(reqs, expected.argmax(-1).tolist()):
            if req.grammar is None:
                continue
            assert req.grammar.accept_token(token)
            if req.grammar.is_terminated():
                req.grammar = None


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("vocab", (96, 101))
def test_host_masked_copy_equals_xgrammar_kernel(dtype: torch.dtype, vocab: int) -> None:
    """Random masks, sparse and dense, every bit of a word included (bit 31 is the sign bit), a
    vocabulary that does or does not fill its last word: the same logits as xgrammar's CPU kernel
    applied to a copy, and the input untouched."""
    pytest.importorskip("xgrammar")
    from xgrammar import apply_token_bitmask_inplace

    from radixlm.constrained.structured import masked_copy_host

    gen = torch.Generator().manual_seed(3)
    words = (vocab + 31) // 32
    for density in (0.05, 0.5, 0.97):
        bits = torch.rand(4, words * 32, generator=gen) < density
        packed = (bits.view(4, words, 32).long() << torch.arange(32)).sum(-1)
        bitmask = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)
        logits = torch.randn(4, vocab, generator=gen).to(dtype)
        before = logits.clone()
        expected = logits.clone()
        apply_token_bitmask_inplace(expected, bitmask, vocab_size=vocab)
        got = masked_copy_host(logits, bitmask)
        assert got.dtype == dtype and torch.equal(got, expected)
        assert torch.equal(logits, before)
        assert torch.isinf(got).any() and not torch.isinf(got).all()
