"""`--speculative-*` flags checked and resolved into a `SpecPlan` (pure Python, no torch).

SGLang's conventions: `--speculative-num-steps` is the number of draft tokens proposed per
step (the chain's depth), `--speculative-num-draft-tokens` the number of positions one verify
forward scores (the last accepted token plus the drafts, so `num_steps + 1` for a chain) and
`--speculative-eagle-topk` the branching of a draft tree (1: a chain). Every value an algorithm
cannot honour is a start-up error naming it, never silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

SPECULATIVE_ALGORITHMS = ("NGRAM", "STANDALONE", "EAGLE", "EAGLE3")
DEFAULT_DRAFTS = {
    "NGRAM": 7,
    "STANDALONE": 4,
    "EAGLE": 3,
    "EAGLE3": 3,
}  # draft tokens per verify step when no flag says
NEEDS_DRAFT_PATH = ("STANDALONE", "EAGLE", "EAGLE3")
READS_HIDDEN_STATES = ("EAGLE", "EAGLE3")  # drafters fed every target forward's hidden states


@dataclass(frozen=True)
class SpecPlan:
    """The resolved speculative configuration: `algorithm` drafts `num_drafts` (>= 1) tokens per
    verify step as a chain; NGRAM matches suffixes of `ngram_min`..`ngram_max` tokens."""

    algorithm: str
    num_drafts: int
    draft_model_path: Optional[str] = None
    ngram_min: int = 1
    ngram_max: int = 4

    @property
    def reads_hidden_states(self) -> bool:
        """The drafter reads every target forward's hidden states, which a CUDA-graph replay
        does not hand out: the target then runs every forward eagerly."""
        return self.algorithm in READS_HIDDEN_STATES


def check_speculative(args: Any) -> Optional[SpecPlan]:
    """The plan for `args`' speculative flags (None when speculation is off); raises ValueError
    naming the first flag whose value the chosen algorithm does not support."""
    algo = args.speculative_algorithm
    if algo is None:
        _refuse_orphan_flags(args)
        return None
    algo = algo.upper()
    if algo not in SPECULATIVE_ALGORITHMS:
        raise ValueError(f"speculative_algorithm must be one of {list(SPECULATIVE_ALGORITHMS)}, got {algo!r}")
    if args.is_embedding:
        raise ValueError("--speculative-algorithm needs a generation model, not --is-embedding")
    topk = args.speculative_eagle_topk
    if topk not in (None, 1):
        raise ValueError(
            f"--speculative-eagle-topk {topk}: {algo} drafts a chain (no token tree), only topk 1 is supported"
        )
    drafts = _num_drafts(algo, args.speculative_num_steps, args.speculative_num_draft_tokens)
    return SpecPlan(algo, drafts, *_algorithm_fields(algo, args))


def _num_drafts(algo: str, steps: Optional[int], tokens: Optional[int]) -> int:
    for name, value in (("speculative_num_steps", steps), ("speculative_num_draft_tokens", tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if tokens is not None and tokens < 2:
        raise ValueError(f"speculative_num_draft_tokens must be >= 2 (the last token plus a draft), got {tokens}")
    if steps is not None and tokens is not None and tokens != steps + 1:
        raise ValueError(
            f"speculative_num_draft_tokens ({tokens}) must equal speculative_num_steps + 1 ({steps + 1}): "
            f"{algo} verifies a chain (eagle topk 1)"
        )
    if steps is not None:
        return steps
    return tokens - 1 if tokens is not None else DEFAULT_DRAFTS[algo]


def _algorithm_fields(algo: str, args: Any) -> tuple[Optional[str], int, int]:
    path = args.speculative_draft_model_path
    lo, hi = args.speculative_ngram_min_match_window_size, args.speculative_ngram_max_match_window_size
    if algo in NEEDS_DRAFT_PATH:
        if not path:
            raise ValueError(f"--speculative-algorithm {algo} needs --speculative-draft-model-path")
        if args.tp_size > 1:
            raise ValueError(f"--speculative-algorithm {algo} is not supported with --tp > 1 yet")
    elif path:
        raise ValueError(f"--speculative-draft-model-path is only read by STANDALONE and EAGLE / EAGLE3, not {algo}")
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(
            "speculative_ngram_min_match_window_size and speculative_ngram_max_match_window_size must be "
            f"integers with 1 <= min <= max, got {lo!r} and {hi!r}"
        )
    return path, lo, hi


def _refuse_orphan_flags(args: Any) -> None:
    """A speculative setting without an algorithm would be ignored: refuse it instead."""
    for name in ("speculative_num_steps", "speculative_num_draft_tokens", "speculative_eagle_topk"):
        if getattr(args, name) is not None:
            raise ValueError(f"{name} is set but speculative_algorithm is not")
    if args.speculative_draft_model_path:
        raise ValueError("speculative_draft_model_path is set but speculative_algorithm is not")
