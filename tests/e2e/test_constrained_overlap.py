"""Overlap scheduling with constrained requests: the forward of step N+1 is launched before the
grammars accept step N's tokens, and the sampling of N+1 waits for them. Outputs (greedy, and one
seeded sampled row) must be exactly those of the plain loop (regexes, JSON schemas, unconstrained
rows in the same batches, requests finishing mid-flight), with jump-forward on and off, and the
overlapped run must really have launched constrained forwards early."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from helpers.inproc_scheduler import generate, make_scheduler

from radixlm.sampling.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(importlib.util.find_spec("xgrammar") is None, reason="needs xgrammar")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z ]{1,12}$"},
        "age": {"type": "integer", "minimum": 1, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}
SPECS: list[dict[str, Any]] = [
    {"regex": r"(cat|dog|bird)( and (cat|dog|bird)){0,3}\."},
    {"json_schema": json.dumps(SCHEMA)},
    {},  # unconstrained, in the same batches
    {"regex": r"[a-z]{2,12}-[0-9]{1,3}( [a-z]{1,5}){0,6}"},
    {"json_schema": json.dumps(SCHEMA)},
    {"regex": r"(yes|no)"},  # finishes after a step or two, while the others run on
    {"regex": r"[a-z ]{4,40}\.", "temperature": 0.9, "seed": 5},  # seeded sampling: same step seeds
]
PROMPTS = [[5, 6, 7], [40, 41, 42, 43], [100, 7, 200], [9, 300, 12, 13, 14], [60, 61], [7, 8, 9, 10], [11, 12]]


def run(tokenizer_dir: str, overlap: bool, jump: bool, backend: str) -> tuple[list[dict], Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sched = make_scheduler(
        tokenizer_dir,
        tokenizer=tok,
        disable_overlap_schedule=not overlap,
        disable_jump_forward=not jump,
        grammar_backend=backend,
    )
    params = [
        SamplingParams(**{"temperature": 0, "max_new_tokens": 40 + 7 * i, **spec}) for i, spec in enumerate(SPECS)
    ]
    return generate(sched, PROMPTS, params), sched


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
@pytest.mark.parametrize("jump", [False, True])
def test_overlapped_constrained_decode_matches_plain(tiny_llama_dir: str, jump: bool, backend: str) -> None:
    overlapped, sched_on = run(tiny_llama_dir, True, jump, backend)
    serial, sched_off = run(tiny_llama_dir, False, jump, backend)
    assert [(r["ids"], r["finish"]) for r in overlapped] == [(r["ids"], r["finish"]) for r in serial]
    constrained = [r for r, spec in zip(overlapped, SPECS) if "regex" in spec or "json_schema" in spec]
    assert all(r["finish"] is not None and len(r["ids"]) >= 1 for r in constrained)
    assert sum(len(r["ids"]) for r in constrained) > 40  # enough constrained steps to matter
    assert sched_off.num_overlapped_steps == 0
    assert sched_on.sampler.structured.masked_steps > 0
    if jump:  # the forced tokens change the next forward's input: never launched before them
        assert sched_on.num_deferred_samplings == 0
    else:  # most steps launched a constrained forward before the grammars had the previous tokens
        assert sched_on.num_deferred_samplings > 0.5 * sched_off.num_forward_steps
        assert sched_on.num_overlapped_steps >= sched_on.num_deferred_samplings
