"""`SpecDecoder`: the scheduler's speculative collaborator. For a decode step it asks the drafter
for each running request's draft tokens, takes KV slots for them and builds the verify batch."""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch

from radixlm.mem_cache.cache_manager import KVCacheManager
from radixlm.scheduler.request import Req
from radixlm.speculative.grammar_drafts import prune_drafts
from radixlm.speculative.stats import SpecStats
from radixlm.speculative.verify_batch import VerifyBatch, build_verify, build_verify_as_decode, can_verify_as_decode


class Drafter(Protocol):
    """Proposes draft tokens: at most `limits[i]` for request i (fewer, or none, is fine)."""

    def propose(self, reqs: list[Req], limits: list[int]) -> list[list[int]]: ...

    def check_leak(self) -> None:
        """Raise unless the drafter holds no memory for any request (called when idle)."""


class SpecDecoder:
    """Invariant: a verify batch is built only when the KV pool can hold every request's tokens
    and drafts at once; otherwise (or when nothing was drafted) `decode_batch` returns None and
    the scheduler runs its plain decode. Drafts are real vocabulary ids (a copied image pad id
    ends the chain); a request with a grammar keeps only the drafts its
    constrained decoder could have sampled (`grammar_drafts.prune_drafts`); drafts never run a
    request past `max_new_tokens` or the context. A verify of at most `decode_rows` tokens in all
    (the decode CUDA graphs' largest batch; 0 without graphs) runs as a decode of one row per
    token, in the graphs; a larger one, or one after jump-forward, as an extend."""

    def __init__(
        self,
        drafter: Drafter,
        cache: KVCacheManager,
        context_len: int,
        vocab_size: int,
        device: torch.device,
        decode_rows: int = 0,
    ) -> None:
        self.drafter, self.cache = drafter, cache
        self.context_len, self.vocab_size, self.device = context_len, vocab_size, device
        self.decode_rows = decode_rows
        self.stats = SpecStats()

    def decode_batch(self, reqs: list[Req]) -> Optional[VerifyBatch]:
        """The verify batch of `reqs` (running requests whose next decode KV is available), or None."""
        drafts = self.drafter.propose(reqs, [self._limit(req) for req in reqs])
        drafts = [self._checked(req, chain) for req, chain in zip(reqs, drafts)]
        if not any(drafts) or self._need(reqs, drafts) > self.cache.available():
            return None
        starts = [req.kv_len for req in reqs]
        for req, chain in zip(reqs, drafts):
            if self.cache.alloc_slots(req, req.seq_len - req.kv_len + len(chain)) is None:
                raise RuntimeError("KV pool exhausted while taking slots for draft tokens")
        self.cache.write_rows([(req, start, req.kv_len) for req, start in zip(reqs, starts)])
        self.stats.proposed += sum(map(len, drafts))
        rows = sum(len(chain) + 1 for chain in drafts)
        as_decode = rows <= self.decode_rows and can_verify_as_decode(reqs, starts)
        build = build_verify_as_decode if as_decode else build_verify
        return build(reqs, starts, drafts, self.cache.req_pool.table, self.device)

    def info(self) -> dict[str, Any]:
        return self.stats.info()

    def check_leak(self) -> None:
        """Raise unless the drafter's own memory (a draft model's KV pool) is all free (idle only)."""
        self.drafter.check_leak()

    def _checked(self, req: Req, chain: list[int]) -> list[int]:
        """`chain` up to its first id the model cannot take (an image's pad id copied from the
        prompt), then pruned by the request's grammar."""
        for i, token in enumerate(chain):
            if not 0 <= token < self.vocab_size:
                chain = chain[:i]
                break
        return prune_drafts(req.grammar, chain) if req.grammar is not None and chain else chain

    def _limit(self, req: Req) -> int:
        """How many drafts `req` may take: never past its limits."""
        left = req.params.max_new_tokens - len(req.output_ids) - 1
        return max(0, min(left, self.context_len - req.seq_len - 1))

    def _need(self, reqs: list[Req], drafts: list[list[int]]) -> int:
        """Slots (whole pages) the verify step takes beyond what the requests hold."""
        page = self.cache.page_size
        pages = sum(-(-(r.seq_len + len(d)) // page) - -(-r.kv_len // page) for r, d in zip(reqs, drafts))
        return pages * page
