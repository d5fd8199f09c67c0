"""Assembles speculative decoding for the scheduler process from `--speculative-*` flags."""

from __future__ import annotations

import logging
from typing import Any, Optional

from radixlm.config.server_args import ServerArgs
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.speculative.decoder import Drafter, SpecDecoder
from radixlm.speculative.ngram import NgramDrafter
from radixlm.speculative.spec_sampler import SpeculativeSampler

logger = logging.getLogger(__name__)


def build_speculative(
    args: ServerArgs, runner: Any, cache: KVCacheManager, sampler: Any
) -> tuple[Optional[SpecDecoder], Any]:
    """(the SpecDecoder, the sampler to use): (None, `sampler`) when speculation is off. With it
    on the scheduler must run the plain loop (verify results are read before the next batch)."""
    plan = args.speculative_plan()
    if plan is None:
        return None, sampler
    drafter = _drafter(plan, args, runner)
    graphs = getattr(runner, "graphs", None)  # verify steps that fit run in the decode graphs
    decode_rows = graphs.max_bs if graphs is not None else 0
    spec = SpecDecoder(drafter, cache, runner.context_len, runner.vocab_size, runner.device, decode_rows)
    observe = getattr(drafter, "observe", None)  # a drafter reading the target's hidden states
    logger.info(
        "speculative decoding: %s, %d draft tokens per verify step; the plain (non-overlapped) scheduler loop is used",
        plan.algorithm,
        plan.num_drafts,
    )
    return spec, SpeculativeSampler(sampler, cache, spec.stats, observe)


def _drafter(plan: Any, args: ServerArgs, runner: Any) -> Drafter:
    if plan.algorithm == "NGRAM":
        return NgramDrafter(plan.ngram_min, plan.ngram_max, plan.num_drafts)
    if plan.algorithm in ("EAGLE", "EAGLE3"):
        from radixlm.speculative.eagle import EagleDrafter

        eagle = EagleDrafter.build(args, plan, runner)
        runner.capture_hidden(eagle.capture)
        return eagle
    from radixlm.speculative.standalone import StandaloneDrafter

    return StandaloneDrafter.build(args, plan, runner)
