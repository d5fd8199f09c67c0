"""STANDALONE drafting: a smaller model with the target's tokenizer, run by its own
`ModelRunner` over its own KV pool, proposes each request's next tokens greedily.

Every speculating request has a shadow `Req` on the draft side whose KV covers a prefix of the
request's tokens (prompt, output, then the drafts of the last step). Before drafting, the shadow
keeps the longest prefix it shares with the request and recomputes the rest in one extend
forward; each further draft token costs one more one-token forward of the whole batch."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from radixlm.config.server_args import ServerArgs
from radixlm.executor.model_runner import ModelRunner
from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.kv_pool import SlotAllocator
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.scheduler.request import Req
from radixlm.speculative.args import SpecPlan
from radixlm.speculative.verify_batch import build_verify

logger = logging.getLogger(__name__)


class StandaloneDrafter:
    """Invariant: `shadows[rid]` exists only for a request that took part in a `propose` and has
    not been seen finished or retracted since; its tokens `[0, kv_len)` are a prefix of what the
    request had then plus the drafts proposed for it, and its KV slots are the draft pool's only
    owned slots (`check_leak` releases the shadows of finished requests, then demands an empty
    pool). A request the draft pool cannot hold gets no drafts that step."""

    def __init__(self, runner: Any, num_drafts: int, target_vocab: int) -> None:
        self.runner, self.num_drafts = runner, num_drafts
        self.vocab = min(runner.vocab_size, target_vocab)  # ids the target can score
        page = runner.args.page_size
        self.cache = KVCacheManager(
            SlotAllocator(runner.pool.size, page), runner.req_to_token_pool, RadixCache(page, disable=True)
        )
        self.shadows: dict[str, tuple[Req, Req]] = {}  # rid -> (the request, its draft-side shadow)

    @classmethod
    def build(cls, args: ServerArgs, plan: SpecPlan, target: Any) -> "StandaloneDrafter":
        """The draft model's runner, built from `args` with the draft's path: eager (no CUDA
        graphs), a pool as large as the target's, no speculative flags or LoRA adapters of its own
        (it drafts with its base weights for every request)."""
        draft_args = dataclasses.replace(
            args,
            model_path=plan.draft_model_path,
            tokenizer_path=None,
            quantization=None,
            context_length=None,
            max_total_tokens=target.pool.size,
            disable_cuda_graph=True,
            enable_torch_compile=False,
            speculative_algorithm=None,
            speculative_draft_model_path=None,
            speculative_num_steps=None,
            speculative_num_draft_tokens=None,
            speculative_eagle_topk=None,
            enable_lora=False,
            lora_paths=None,
        )
        runner = ModelRunner(draft_args, device=target.device)
        if runner.vocab_size < target.vocab_size:
            logger.warning(
                "draft model vocabulary (%d) is smaller than the target's (%d): it drafts from its own ids only",
                runner.vocab_size,
                target.vocab_size,
            )
        return cls(runner, plan.num_drafts, target.vocab_size)

    def propose(self, reqs: list[Req], limits: list[int]) -> list[list[int]]:
        """Up to `min(limits[i], num_drafts)` greedy draft tokens for request i."""
        self._release_stale()
        limits = [min(lim, self.num_drafts, self.runner.context_len - r.seq_len - 1) for r, lim in zip(reqs, limits)]
        shadows, starts = self._sync(reqs, limits)
        rows = [(i, shadow) for i, shadow in enumerate(shadows) if shadow is not None]
        drafts: list[list[int]] = [[] for _ in reqs]
        step_tokens = self._forward([shadow for _, shadow in rows], [starts[i] for i, _ in rows])
        for depth in range(1, max([limits[i] for i, _ in rows], default=0) + 1):
            for (i, _), token in zip(rows, step_tokens):
                drafts[i].append(token)
            rows = [(i, shadow) for (i, shadow), token in zip(rows, step_tokens) if limits[i] > depth]
            if not rows:
                break
            rows, step_tokens = self._extend_by_one(rows, drafts)
        return drafts

    def check_leak(self) -> None:
        """With every request finished: release their shadows, then the draft pool must be whole."""
        self._release_stale()
        if self.shadows:
            raise AssertionError(f"draft shadows of unfinished requests: {sorted(self.shadows)}")
        self.cache.check_no_leak()

    # -- internals -------------------------------------------------------------
    def _sync(self, reqs: list[Req], limits: list[int]) -> tuple[list[Optional[Req]], list[int]]:
        """(shadow, start) of each request: the shadow holds the request's tokens, its KV
        computed for `[0, start)` and slots taken for `[start, seq_len)` (at least one token).
        The shadow is None where `limit` is 0 or the draft pool or table is full."""
        shadows: list[Optional[Req]] = []
        starts: list[int] = []
        for req, limit in zip(reqs, limits):
            shadow = self._shadow_of(req) if limit > 0 else None
            starts.append(shadow.kv_len if shadow is not None else 0)
            if shadow is not None and self.cache.alloc_slots(shadow, shadow.seq_len - shadow.kv_len) is None:
                shadow = None
            shadows.append(shadow)
        self.cache.write_rows([(s, start, s.kv_len) for s, start in zip(shadows, starts) if s is not None])
        return shadows, starts

    def _shadow_of(self, req: Req) -> Optional[Req]:
        """`req`'s shadow, trimmed to the prefix it shares with `req` (short of its last token)
        and holding `req`'s tokens; None when no table row is free."""
        entry = self.shadows.get(req.rid)
        if entry is None or entry[0] is not req:
            if entry is not None:
                self._release(req.rid)
            shadow = Req(req.rid, req.origin_input_ids, req.params)
            if not self.cache.take_row(shadow):
                return None
            self.shadows[req.rid] = (req, shadow)
        else:
            shadow = entry[1]
        keep = min(shadow.prompt_len + _common(shadow.output_ids, req.output_ids), shadow.kv_len, req.seq_len - 1)
        self.cache.trim(shadow, keep)
        shadow.output_ids = list(req.output_ids)
        return shadow

    def _extend_by_one(self, rows: list[tuple[int, Req]], drafts: list[list[int]]) -> tuple[list, list[int]]:
        """Append each row's newest draft to its shadow and run the one-token forward: (the rows
        that ran, their next tokens). A row the draft pool cannot grow stops drafting here."""
        ran, spans = [], []
        for i, shadow in rows:
            shadow.output_ids.append(drafts[i][-1])
            if self.cache.alloc_slots(shadow, 1) is None:
                shadow.output_ids.pop()
                continue
            ran.append((i, shadow))
            spans.append((shadow, shadow.kv_len - 1, shadow.kv_len))
        self.cache.write_rows(spans)
        return ran, self._forward([shadow for _, shadow in ran], [start for _, start, _ in spans])

    def _forward(self, shadows: list[Req], starts: list[int]) -> list[int]:
        """Greedy next token of each shadow, running its tokens `[starts[i], seq_len)` (their
        slots taken and written to the table)."""
        if not shadows:
            return []
        batch = build_verify(shadows, starts, [[] for _ in shadows], self.cache.req_pool.table, self.runner.device)
        logits = self.runner.forward(batch.forward)
        return logits[:, : self.vocab].argmax(dim=-1).tolist()

    def _release_stale(self) -> None:
        """Release the shadows of requests that finished or were retracted (they lost their KV)."""
        for rid, (req, _) in list(self.shadows.items()):
            if req.finished_reason is not None or req.req_pool_idx is None:
                self._release(rid)

    def _release(self, rid: str) -> None:
        _, shadow = self.shadows.pop(rid)
        self.cache.release(shadow)


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of `a` and `b`."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])
