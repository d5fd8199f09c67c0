"""Chooses which waiting requests to prefill next, within the KV and token budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.mem_cache.radix_cache import RadixCache
from radixlm.multimodal.inputs import chunk_end
from radixlm.scheduler.batch import ExtendItem
from radixlm.scheduler.request import Req

LPM_MAX_QUEUE = 128  # past this, matching every waiting request costs more than it saves
# A request sharing at least this many more tokens with one admitted in the same step than with
# the cache waits a step: the next step finds that prefix in the tree instead of computing it twice.
IN_BATCH_SHARE_MIN = 32


@dataclass(frozen=True)
class PrefillBudget:
    """Per-step limits: tokens in one prefill batch, chunk size, running requests, and
    the KV slots to keep in reserve for the decodes of already-running requests."""

    max_prefill_tokens: int
    chunk_size: Optional[int]
    max_running: int
    reserved_tokens: int
    new_token_ratio: float
    max_loras: int = 0  # distinct LoRA adapters a batch may use (0: no adapters served)


def order_waiting(waiting: list[Req], policy: str, cache: KVCacheManager) -> list[Req]:
    """`lpm`: longest cached prefix first (so shared prefixes are computed once); else arrival order."""
    if policy != "lpm" or len(waiting) > LPM_MAX_QUEUE:
        return list(waiting)
    lengths = {id(r): len(cache.tree.match_prefix(r.tree_key(r.seq_len)).values) for r in waiting}
    return sorted(waiting, key=lambda r: -lengths[id(r)])


def match_limit(req: Req) -> int:
    """How many leading tokens may come from the cache: never all (the last must run to get
    logits), none past the first position whose prompt logprob was asked for, and none at all
    for a request that needs every token computed (mean / CLS embedding pooling)."""
    if req.full_prefill:
        return 0
    limit = req.seq_len - 1
    if req.wants_prompt_logprobs():
        limit = min(limit, max(req.logprob_start_len - 1, 0))
    return limit


class PrefillAdder:
    """Admits requests one by one until a budget runs out. Invariant: a request either ends up
    in `items` with its slots allocated, or is left untouched (no lock, no slots). The admitted
    requests' table rows are not written here: `table_spans` lists what `KVCacheManager.write_rows`
    must write before the batch runs (one copy for the whole batch).

    Requests that would recompute a prefix another request computes in this same step are
    deferred one step (n>1 siblings by `prefix_group`, others through a tree of this step's
    prompts), so a prefix shared inside one burst of arrivals is computed once. The first
    request of a batch is never deferred, so the waiting queue always makes progress."""

    def __init__(
        self, cache: KVCacheManager, budget: PrefillBudget, num_running: int, adapters: frozenset[int] = frozenset()
    ) -> None:
        """`adapters`: the LoRA adapter uids of the running requests (decoded in one batch with these)."""
        self.cache, self.budget = cache, budget
        self.adapters = set(adapters)
        self.items: list[ExtendItem] = []
        self.tokens_left = budget.max_prefill_tokens
        self.num_running = num_running
        self.groups: set[str] = set()
        self.chunked: Optional[Req] = None
        self.in_batch = RadixCache(disable=cache.tree.disable)  # token ids only: no KV behind it
        self.num_deferred = 0
        self.table_spans: list[tuple[Req, int, int]] = []

    def add(self, req: Req) -> bool:
        """Try to admit `req`; returns False when admission should stop for this step."""
        if self.num_running + len(self.items) >= self.budget.max_running or self.tokens_left <= 0:
            return False
        if req.prefix_group is not None and req.prefix_group in self.groups:
            return True  # wait one step: its sibling's prompt will then be in the tree
        if req.lora_uid and req.lora_uid not in self.adapters and len(self.adapters) >= self.budget.max_loras:
            return True  # its adapter would exceed max_loras_per_batch: wait until one finishes
        fresh = req.kv_len == 0
        if fresh:
            self.cache.match(req, match_limit(req))
            if self._shares_with_batch(req):
                self._undo(req, fresh)
                self.num_deferred += 1
                return True
        ext = req.seq_len - req.kv_len
        remaining = req.params.max_new_tokens - len(req.output_ids)
        reserve = self.budget.reserved_tokens + int(remaining * self.budget.new_token_ratio)
        if ext + reserve > self.cache.available() and (self.items or self.num_running):
            self._undo(req, fresh)
            return False
        return self._admit(req, ext, fresh)

    def _shares_with_batch(self, req: Req) -> bool:
        """True when `req` shares IN_BATCH_SHARE_MIN more tokens with this step's prompts than with the cache."""
        shared = self.in_batch.prefix_len(req.tree_key(match_limit(req)))
        return shared - req.kv_len >= IN_BATCH_SHARE_MIN

    def _admit(self, req: Req, ext: int, fresh: bool) -> bool:
        length, sample = ext, True
        limit = min(self.tokens_left, self.budget.chunk_size or ext)
        if ext > limit:
            page = self.cache.page_size
            length = limit - limit % page if page > 1 else limit
            length = chunk_end(req.images, req.kv_len, req.kv_len + length, page) - req.kv_len
            sample = False
            if length <= 0:
                self._undo(req, fresh)
                return False
        new_row = req.req_pool_idx is None
        if not self.cache.take_row(req) or self.cache.alloc_slots(req, length) is None:
            self._undo(req, fresh)
            return False
        start = req.kv_len - length
        self.table_spans.append((req, 0 if new_row else start, req.kv_len))
        if fresh and not req.output_ids and not req.num_retractions:
            req.cached_tokens = start  # its first admission's cache hit, never its own earlier chunks
        self.items.append(ExtendItem(req, start, length, sample, _logprob_positions(req, start, length)))
        self.tokens_left -= length
        ids = req.tree_key(req.seq_len)
        self.in_batch.insert(ids, ids)
        if req.prefix_group is not None:
            self.groups.add(req.prefix_group)
        if req.lora_uid:
            self.adapters.add(req.lora_uid)
        if not sample:
            self.chunked = req
            return False
        return True

    def _undo(self, req: Req, fresh: bool) -> None:
        """Put a just-matched request back as it was; a chunked one keeps its KV for later."""
        if fresh:
            self.cache.release(req)


def _logprob_positions(req: Req, start: int, length: int) -> list[int]:
    """Positions in [start, start+length) whose logits score a prompt token (pos predicts pos+1)."""
    if not req.wants_prompt_logprobs():
        return []
    lo = max(start, req.logprob_start_len - 1, 0)
    hi = min(start + length, len(req.origin_input_ids) - 1)
    return list(range(lo, hi))
