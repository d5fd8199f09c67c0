"""The golden comparison against HF transformers shared by the golden tests: greedy tokens
(exact on the CPU; on the GPU a first difference must be a near-tie of HF's) and prompt / output
top-5 logprobs within LOGPROB_TOL."""

from __future__ import annotations

import random

import torch

from helpers.tiny_models import hf_greedy, hf_logprobs

NEW_TOKENS = 32
ON_GPU = torch.cuda.is_available()  # the engine runs on CUDA (Triton + CUDA graphs) when there is one
# CPU float32 is compared exactly. On the GPU path, kernels reorder float sums, so logprobs get a
# looser bound and a greedy choice may differ only where HF's top two are within GPU_TIE_TOL.
LOGPROB_TOL = 2e-3 if ON_GPU else 1e-4
GPU_TIE_TOL = 1e-3
GREEDY = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}


def random_prompts(count: int, lo: int, hi: int, seed: int = 0, vocab: int = 400) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randrange(lo, hi))] for _ in range(count)]


def assert_greedy_equal(hf: object, prompt: list[int], ours: list[int], ref: list[int]) -> None:
    """Exact on CPU. On GPU, the first difference must be a near-tie in HF's own logprobs."""
    if ours == ref or not ON_GPU:
        assert ours == ref
        return
    i = next(j for j, (a, b) in enumerate(zip(ours, ref)) if a != b)
    row = hf_logprobs(hf, prompt + ref[:i])[-1]
    assert abs(row[ref[i]].item() - row[ours[i]].item()) < GPU_TIE_TOL, (i, ours[i], ref[i])


def check_logprobs(hf: object, prompt: list[int], out: dict) -> None:
    """Prompt and output chosen-token and top-5 logprobs within LOGPROB_TOL of HF's."""
    meta = out["meta_info"]
    ref = hf_logprobs(hf, prompt + out["output_ids"])
    inputs = meta["input_token_logprobs"]
    assert len(inputs) == len(prompt) and inputs[0][0] is None
    for pos in range(1, len(prompt)):
        logprob, token = inputs[pos]
        assert token == prompt[pos]
        assert abs(logprob - ref[pos - 1, token].item()) < LOGPROB_TOL
        check_top(meta["input_top_logprobs"][pos], ref[pos - 1])
    outputs = meta["output_token_logprobs"]
    assert len(outputs) == len(out["output_ids"])
    for step, (logprob, token) in enumerate(outputs):
        row = ref[len(prompt) - 1 + step]
        assert abs(logprob - row[token].item()) < LOGPROB_TOL
        check_top(meta["output_top_logprobs"][step], row)


def check_top(top: list, ref_row: torch.Tensor) -> None:
    values, ids = ref_row.topk(5)
    assert len(top) == 5
    for (logprob, token), ref_value in zip(top, values.tolist()):
        assert abs(logprob - ref_value) < LOGPROB_TOL
        assert abs(ref_row[token].item() - logprob) < LOGPROB_TOL  # same token (ties allowed)


def check_batch_single_and_logprobs(hf: object, engine: object, prompts: list[list[int]]) -> None:
    """The golden check shared by every family: greedy tokens of a batch and of its first prompt
    alone equal HF's, every request runs NEW_TOKENS, and the first three prompts' prompt and
    output top-5 logprobs match HF's scoring of our own tokens (holds even past a GPU tie)."""
    batch = engine.generate(input_ids=prompts, sampling_params=GREEDY)
    single = engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
    scored = engine.generate(
        input_ids=prompts[:3], sampling_params=GREEDY, return_logprob=True, top_logprobs_num=5, logprob_start_len=0
    )
    engine.check_no_leak()
    for prompt, out in zip(prompts, batch):
        assert_greedy_equal(hf, prompt, out["output_ids"], hf_greedy(hf, prompt, NEW_TOKENS))
        assert out["meta_info"]["completion_tokens"] == NEW_TOKENS
    assert_greedy_equal(hf, prompts[0], single["output_ids"], batch[0]["output_ids"])
    for prompt, out in zip(prompts[:3], scored):
        check_logprobs(hf, prompt, out)
