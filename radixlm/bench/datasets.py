"""Benchmark workloads shared by `bench_offline_throughput` and `bench_serving` (SGLang's names).

Three datasets, all built locally (nothing is downloaded):

- `random`: prompts of random token ids, lengths drawn uniformly from
  [len * range_ratio, len] (SGLang's `--random-range-ratio`; 1.0 gives exact lengths).
- `sharegpt`: a local ShareGPT-format JSON file (a list of `{"conversations": [{"from": "human",
  "value": ...}, {"from": "gpt", "value": ...}, ...]}`); the first human turn is the prompt and the
  reply's token count is the output length, unless `--sharegpt-output-len` fixes it.
- `generated-shared-prefix`: `gsp_num_groups` random "system prompts", each followed by
  `gsp_prompts_per_group` random questions: the workload the radix cache is for.

Every request carries both its token ids and its text (the ids decoded), so a client may send
either; `prompt_len` is the number of ids.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from typing import Any, Optional

DATASETS = ("random", "sharegpt", "generated-shared-prefix")
MIN_SHAREGPT_LEN = 4  # shorter prompts or replies are dropped, as SGLang does
MAX_SHAREGPT_PROMPT = 1024
MAX_SHAREGPT_TOTAL = 2048


@dataclass(frozen=True)
class BenchRequest:
    """One benchmark request: the prompt (ids and text) and how many tokens to generate."""

    prompt: str
    prompt_ids: list[int]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The dataset flags, with SGLang's names and defaults scaled for a CPU."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset-name", choices=DATASETS, default="random")
    group.add_argument("--dataset-path", default=None, help="local ShareGPT-format JSON (sharegpt only)")
    group.add_argument("--num-prompts", type=int, default=16)
    group.add_argument("--seed", type=int, default=1)
    group.add_argument("--random-input-len", type=int, default=256)
    group.add_argument("--random-output-len", type=int, default=32)
    group.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="lengths are drawn from [len * ratio, len]; 1.0 = exact lengths",
    )
    group.add_argument("--sharegpt-output-len", type=int, default=None, help="fix every output length")
    group.add_argument(
        "--sharegpt-context-len", type=int, default=None, help="drop conversations whose prompt + output exceed this"
    )
    group.add_argument("--gsp-num-groups", type=int, default=4)
    group.add_argument("--gsp-prompts-per-group", type=int, default=4)
    group.add_argument("--gsp-system-prompt-len", type=int, default=512)
    group.add_argument("--gsp-question-len", type=int, default=32)
    group.add_argument("--gsp-output-len", type=int, default=32)


def sample_requests(args: argparse.Namespace, tokenizer: Any, vocab_size: Optional[int] = None) -> list[BenchRequest]:
    """Build the requests `args.dataset_name` names. `tokenizer` may be None for the synthetic
    datasets when `vocab_size` is given (the texts are then empty: send ids)."""
    rng = random.Random(args.seed)
    if args.dataset_name == "sharegpt":
        if tokenizer is None:
            raise ValueError("the sharegpt dataset needs a tokenizer")
        return sharegpt_requests(
            args.dataset_path, args.num_prompts, tokenizer, rng, args.sharegpt_output_len, args.sharegpt_context_len
        )
    ids = TokenSource(tokenizer, vocab_size, rng)
    if args.dataset_name == "random":
        return random_requests(
            ids, args.num_prompts, args.random_input_len, args.random_output_len, args.random_range_ratio
        )
    if args.dataset_name == "generated-shared-prefix":
        return shared_prefix_requests(
            ids,
            args.gsp_num_groups,
            args.gsp_prompts_per_group,
            args.gsp_system_prompt_len,
            args.gsp_question_len,
            args.gsp_output_len,
        )
    raise ValueError(f"unknown dataset {args.dataset_name!r}; choose from {list(DATASETS)}")


class TokenSource:
    """Random ordinary token ids (special tokens excluded) and their text."""

    def __init__(self, tokenizer: Any, vocab_size: Optional[int], rng: random.Random) -> None:
        if tokenizer is None and vocab_size is None:
            raise ValueError("random prompts need a tokenizer or a vocabulary size")
        self.tokenizer = tokenizer
        self.rng = rng
        size = len(tokenizer) if tokenizer is not None else vocab_size
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.pool = [t for t in range(size) if t not in special]

    def ids(self, count: int) -> list[int]:
        """`count` random ordinary ids."""
        return [self.rng.choice(self.pool) for _ in range(count)]

    def text(self, ids: list[int]) -> str:
        """The ids decoded ("" without a tokenizer)."""
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    def request(self, ids: list[int], output_len: int) -> BenchRequest:
        return BenchRequest(self.text(ids), ids, output_len)


def _draw_len(rng: random.Random, length: int, range_ratio: float) -> int:
    low = max(1, int(length * range_ratio))
    return rng.randint(low, max(low, length))


def random_requests(
    source: TokenSource, num: int, input_len: int, output_len: int, range_ratio: float
) -> list[BenchRequest]:
    """`num` prompts of random ids; lengths uniform in [len * range_ratio, len]."""
    out = []
    for _ in range(num):
        n_in, n_out = _draw_len(source.rng, input_len, range_ratio), _draw_len(source.rng, output_len, range_ratio)
        out.append(source.request(source.ids(n_in), n_out))
    return out


def shared_prefix_requests(
    source: TokenSource, groups: int, per_group: int, system_len: int, question_len: int, output_len: int
) -> list[BenchRequest]:
    """`groups` random system prompts, each followed by `per_group` random questions, shuffled."""
    out = []
    for _ in range(groups):
        system = source.ids(system_len)
        out += [source.request(system + source.ids(question_len), output_len) for _ in range(per_group)]
    source.rng.shuffle(out)
    return out


def sharegpt_requests(
    path: Optional[str],
    num: int,
    tokenizer: Any,
    rng: random.Random,
    fixed_output_len: Optional[int] = None,
    context_len: Optional[int] = None,
) -> list[BenchRequest]:
    """First human turn and its reply from a local ShareGPT JSON file, shuffled with `rng`,
    filtered by length as SGLang does; raises if fewer than `num` conversations qualify."""
    if not path:
        raise ValueError("--dataset-path is required for the sharegpt dataset (nothing is downloaded)")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    pairs = [_first_pair(conv) for conv in data]
    pairs = [p for p in pairs if p is not None]
    rng.shuffle(pairs)
    out: list[BenchRequest] = []
    for prompt, reply in pairs:
        if len(out) == num:
            break
        request = _sharegpt_request(prompt, reply, tokenizer, fixed_output_len, context_len)
        if request is not None:
            out.append(request)
    if len(out) < num:
        raise ValueError(f"{path}: only {len(out)} usable conversations, {num} requested")
    return out


def _first_pair(conv: Any) -> Optional[tuple[str, str]]:
    if not isinstance(conv, dict):
        return None
    turns = conv.get("conversations") or conv.get("conversation") or []
    if len(turns) < 2:
        return None
    return str(turns[0].get("value", "")), str(turns[1].get("value", ""))


def _sharegpt_request(
    prompt: str, reply: str, tokenizer: Any, fixed_output_len: Optional[int], context_len: Optional[int]
) -> Optional[BenchRequest]:
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    output_len = fixed_output_len or len(tokenizer.encode(reply, add_special_tokens=False))
    if len(ids) < MIN_SHAREGPT_LEN or (fixed_output_len is None and output_len < MIN_SHAREGPT_LEN):
        return None
    limit = context_len or MAX_SHAREGPT_TOTAL
    if (context_len is None and len(ids) > MAX_SHAREGPT_PROMPT) or len(ids) + output_len > limit:
        return None
    return BenchRequest(prompt, ids, output_len)


def dataset_summary(requests: list[BenchRequest]) -> str:
    """One line: request count and total / mean prompt and output lengths."""
    n = len(requests)
    prompt, output = sum(r.prompt_len for r in requests), sum(r.output_len for r in requests)
    return (
        f"{n} requests: {prompt} prompt tokens (mean {prompt / max(n, 1):.1f}), "
        f"{output} output tokens (mean {output / max(n, 1):.1f})"
    )
