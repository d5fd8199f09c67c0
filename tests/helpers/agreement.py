"""Next-token agreement of two engines on the bundled SmolLM2-135M: sequences (a few prompts and a
reference engine's greedy continuations) scored by each engine at every position (its top-1 id
and the logprob of the token that follows), then compared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "Once upon a time, there was a little girl who lived in a village near the forest.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Photosynthesis is the process by which green plants",
    "To make a cup of tea, first boil the water, then",
]
CONTINUATION = 56  # greedy tokens appended to each prompt: ~300 scored positions in all

Scored = list[tuple[list[int], list[float]]]


def score(engine: Any, sequences: list[list[int]]) -> Scored:
    """Per sequence: the top-1 id predicted at every position after the first, and the logprob
    of the token that actually follows there."""
    outs = engine.generate(
        input_ids=sequences,
        sampling_params={"temperature": 0, "max_new_tokens": 1},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=1,
    )
    scored = []
    for out in outs:
        meta = out["meta_info"]
        tops = [top[0][1] for top in meta["input_top_logprobs"][1:]]
        chosen = [lp for lp, _ in meta["input_token_logprobs"][1:]]
        scored.append((tops, chosen))
    return scored


@dataclass(frozen=True)
class Agreement:
    positions: int
    top1: float  # fraction of positions with the same top-1 id
    mean: float  # |logprob difference|: mean, 99th percentile, max
    p99: float
    worst: float

    def __str__(self) -> str:
        return (
            f"{self.positions} positions: top-1 agreement {100 * self.top1:.1f}%, "
            f"|logprob diff| mean {self.mean:.2e}, p99 {self.p99:.2e}, max {self.worst:.2e}"
        )


def agreement(want: Scored, got: Scored) -> Agreement:
    pairs = [(w, g) for (wt, wl), (gt, gl) in zip(want, got) for w, g in zip(zip(wt, wl), zip(gt, gl))]
    n = len(pairs)
    diffs = sorted(abs(w[1] - g[1]) for w, g in pairs)
    top1 = sum(w[0] == g[0] for w, g in pairs) / n
    return Agreement(n, top1, sum(diffs) / n, diffs[int(0.99 * (n - 1))], diffs[-1])
