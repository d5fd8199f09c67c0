"""Set-up shared by the speculative-decoding tests on tiny models (STANDALONE, EAGLE, EAGLE3):
the prompts and output lengths, greedy parameters, a speculating scheduler built in-process and
the plain scheduler's outputs to compare with."""

from __future__ import annotations

from typing import Any, Optional

from helpers.inproc_scheduler import generate, make_scheduler
from radixlm.sampling.sampling_params import SamplingParams

PROMPTS = [[5 + (i * 11 + j) % 60 for j in range(18)] for i in range(3)] + [[7, 8, 9] * 6]
LENGTHS = (24, 9, 30, 17)  # mixed: requests leave the batch mid-run


def greedy(n: int) -> SamplingParams:
    """Greedy, exactly `n` new tokens (EOS ignored)."""
    return SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)


def spec_scheduler(algorithm: str, target: str, draft: str, **kwargs: Any) -> Any:
    """An in-process scheduler over `target` drafting with `algorithm` from the model or head `draft`."""
    return make_scheduler(target, speculative_algorithm=algorithm, speculative_draft_model_path=draft, **kwargs)


def plain_outputs(target: str, prompts: Optional[list[list[int]]] = None, lengths: tuple[int, ...] = LENGTHS) -> list:
    """The plain scheduler's greedy output ids of `prompts` (default `PROMPTS`), `lengths` tokens each."""
    prompts = PROMPTS if prompts is None else prompts
    return [r["ids"] for r in generate(make_scheduler(target), prompts, [greedy(n) for n in lengths])]
