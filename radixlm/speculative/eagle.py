"""EAGLE / EAGLE3 drafting (chain, topk 1): a small draft head reads the target model's hidden
states (its "features": the final-norm hidden state for EAGLE-1/-2, three intermediate layers'
outputs for EAGLE-3, see `eagle3_head`) and proposes each request's next tokens greedily.

Alignment: head row p reads the target feature of position p and the embedding of token p + 1,
and its output stands in for the target feature of position p + 1 (its LM-head argmax guesses
token p + 2). So once the target has KV (and features) for positions `[0, kv_len)`, the head can
run its rows up to `kv_len - 1`, whose output gives the first draft; each further draft is one
more head row fed with the previous draft and the head's own output feature.

KV: the head's KV pool is indexed by the target's slot numbers (its own buffers, the target's
slot allocation and request-to-token table): head row p lives in the slot of the target's
position p, so the paged pool's free list and the radix tree own the head's KV along with the
target's, and a prefix-cache hit brings the head's rows of the prefix with it. Nothing is
allocated for the head, so nothing can leak. The rows of a step's own drafts (positions
`kv_len` and on, which have no target slot yet) go to a scratch region past the target's slots,
written into the request's table row beyond its KV (columns the verify step's allocation
overwrites). A head row of a cached prefix may have been computed for a different next token, or
never (a request that finished first): that lowers acceptance only; the target verifies every
draft, so outputs never depend on the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from radixlm.attention.registry import create_attention_backend
from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.forward.device_copy import to_device_split
from radixlm.mem_cache.kv_pool import KVPool
from radixlm.scheduler.request import Req
from radixlm.speculative.eagle3_head import AuxCapture, aux_layer_ids, load_eagle3_head
from radixlm.speculative.eagle_head import (
    check_head_shape,
    head_kv_shape,
    load_eagle_head,
    read_head_config,
)


@dataclass
class _Features:
    """Target features of `req` not yet run through the head: `rows[j]` is position `start + j`.
    Invariant: the head's rows `[0, start)` have been run (or came with a cached prefix)."""

    req: Req
    start: int
    rows: torch.Tensor  # [n, hidden], the target's dtype


@dataclass
class _Row:
    """One drafting request: batch index `i`, up to `limit` drafts, its features."""

    i: int
    req: Req
    limit: int
    feats: _Features


class EagleDrafter:
    """Invariant: `features` holds entries only for requests seen in a forward and not seen
    finished or retracted since (`check_leak` drops those, then demands none). `capture` (from
    the model runner, every forward) and `observe` (from the sampler, the same batch right after)
    always come in pairs. `head` is an `EagleHead` or an `Eagle3Head` (same contract), and
    `features_of` turns a forward's final hidden states into the head's features."""

    def __init__(
        self,
        head: Any,
        target: Any,
        table: torch.Tensor,
        pool: KVPool,
        scratch: tuple[int, int],
        num_drafts: int,
        features_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        self.head, self.target, self.target_table, self.pool = head, target, table, pool
        self.backend = head.layers[0].self_attn.backend
        self.scratch_base, self.scratch_size = scratch
        self.num_drafts = num_drafts
        self.embed = head.embed if head.embed is not None else target.model.embed_tokens
        self.dtype = head.fc.weight.dtype  # the head's; the target's embedding may be wider (`use_residual_dtype`)
        self.vocab = target.config.vocab_size
        self.features: dict[str, _Features] = {}
        self.features_of = features_of or _final_hidden
        self._last: Optional[tuple[torch.Tensor, ForwardBatch]] = None

    @classmethod
    def build(cls, args: Any, plan: Any, runner: Any) -> "EagleDrafter":
        """The head (EAGLE or EAGLE3, by `plan.algorithm`) from `plan.draft_model_path`, checked
        against the runner's model, with its KV pool over the runner's slot numbers plus
        `max_running * num_drafts` scratch slots."""
        model = runner.model
        if not (hasattr(model, "compute_logits") and hasattr(getattr(model, "model", None), "embed_tokens")):
            raise ValueError(
                f"--speculative-algorithm {plan.algorithm} needs a Llama-family target, not {type(model).__name__}"
            )
        page, scratch = args.page_size, runner.max_running * plan.num_drafts
        config = read_head_config(plan.draft_model_path)
        check_head_shape(config, runner.config, runner.context_len)
        pool = KVPool(runner.pool.size + scratch, page, *head_kv_shape(config), runner.dtype, runner.device)
        backend = create_attention_backend(args.attention_backend, pool, runner.device)
        path, dtype, device = plan.draft_model_path, runner.dtype, runner.device
        if plan.algorithm == "EAGLE3":
            ids = aux_layer_ids(config, len(model.model.layers))
            head = load_eagle3_head(path, config, runner.config, backend, dtype, device)
            features_of = AuxCapture(model.model.layers, ids).features
        else:
            head, features_of = load_eagle_head(path, config, backend, dtype, device), _final_hidden
        table = runner.req_to_token_pool.table
        return cls(head, model, table, pool, (runner.pool.size + page, scratch), plan.num_drafts, features_of)

    # -- hidden states in -----------------------------------------------------------
    def capture(self, hidden: torch.Tensor, batch: ForwardBatch) -> None:
        """The model runner's sink: every row's final hidden state of the forward just run (EAGLE3
        reads three intermediate layers' outputs instead, kept by `AuxCapture`)."""
        self._last = (self.features_of(hidden).to(self.dtype), batch)  # the heads' dtype: kept per request

    def observe(self, batch: Any) -> None:
        """The scheduled batch whose forward was just captured: keep each request's features."""
        if self._last is None or self._last[1] is not batch.forward:
            return
        hidden, fb = self._last
        self._last = None
        reqs = [item.req for item in batch.items] if batch.items else batch.reqs
        offset = 0
        for req, start, n in zip(reqs, fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu):
            self._keep(req, start, hidden[offset : offset + n])
            offset += n

    def _keep(self, req: Req, start: int, rows: torch.Tensor) -> None:
        """Rows for positions `[start, start + n)` replace what was kept from `start` on; a gap
        (or a restart before `start`) begins afresh at `start`."""
        f = self.features.get(req.rid)
        if f is not None and f.req is req and f.start <= start <= f.start + len(f.rows):
            f.rows = torch.cat([f.rows[: start - f.start], rows])
        else:
            self.features[req.rid] = _Features(req, start, rows)

    # -- drafting -------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, reqs: list[Req], limits: list[int]) -> list[list[int]]:
        """Up to `min(limits[i], num_drafts)` greedy drafts for request i; none for a request
        without the target's features up to its KV length or with several tokens lacking KV."""
        self._release_stale()
        rows = [row for row in map(self._row, range(len(reqs)), reqs, limits) if row is not None]
        drafts: list[list[int]] = [[] for _ in reqs]
        if not rows:
            return drafts
        feats, tokens = self._first_step(rows)
        for depth in range(1, max(row.limit for row in rows) + 1):
            for row, token in zip(rows, tokens):
                drafts[row.i].append(token)
            keep = [j for j, row in enumerate(rows) if row.limit > depth]
            if not keep:
                break
            rows, feats = [rows[j] for j in keep], feats[keep]
            feats, tokens = self._next_step(rows, feats, [drafts[row.i][-1] for row in rows], depth)
        return drafts

    def check_leak(self) -> None:
        """With every request finished: their features are dropped and none may remain."""
        self._release_stale()
        if self.features:
            raise AssertionError(f"EAGLE features kept for unfinished requests: {sorted(self.features)}")

    def _row(self, i: int, req: Req, limit: int) -> Optional[_Row]:
        f = self.features.get(req.rid)
        limit = min(limit, self.num_drafts)
        if limit <= 0 or f is None or f.req is not req or req.seq_len - req.kv_len != 1:
            return None
        if not f.start < req.kv_len <= f.start + len(f.rows):
            return None
        return _Row(i, req, limit, f)

    def _first_step(self, rows: list[_Row]) -> tuple[torch.Tensor, list[int]]:
        """Run each request's head rows `[start, kv_len)` from its target features; (the last
        row's output feature [B, H], its greedy token) per request. The features are consumed."""
        spans = [(row.req, row.feats.start, row.req.kv_len) for row in rows]
        ids = [t for req, lo, hi in spans for t in req.fill_slice(lo + 1, hi + 1)]
        locs = [s for req, lo, hi in spans for s in req.kv_slots[lo:hi]]
        feats = torch.cat([row.feats.rows[: hi - lo] for row, (_, lo, hi) in zip(rows, spans)])
        for row in rows:
            f = row.feats
            f.rows, f.start = f.rows[:0], row.req.kv_len
        return self._run(spans, ids, locs, feats, True)

    def _next_step(
        self, rows: list[_Row], feats: torch.Tensor, tokens: list[int], depth: int
    ) -> tuple[torch.Tensor, list[int]]:
        """One head row per request at position `kv_len + depth - 1`, fed the newest draft and
        the previous output feature; its KV goes to the request's scratch slot for that depth."""
        spans = [(row.req, row.req.kv_len + depth - 1, row.req.kv_len + depth) for row in rows]
        locs = [self._scratch_slot(j, depth) for j in range(len(rows))]
        self._write_table(spans, locs)
        return self._run(spans, tokens, locs, feats, False)

    def _scratch_slot(self, j: int, depth: int) -> int:
        slot = j * self.num_drafts + depth - 1
        assert slot < self.scratch_size, (j, depth)
        return self.scratch_base + slot

    def _write_table(self, spans: list[tuple[Req, int, int]], locs: list[int]) -> None:
        """Point each request's table column `lo` (past its KV) at its scratch slot."""
        table = self.target_table
        rows, cols, values = to_device_split(
            [req.req_pool_idx for req, _, _ in spans] + [lo for _, lo, _ in spans] + locs,
            (len(spans),) * 3,
            table.device,
        )
        table[rows, cols] = values.to(table.dtype)

    def _run(
        self,
        spans: list[tuple[Req, int, int]],
        ids: list[int],
        locs: list[int],
        feats: torch.Tensor,
        from_target: bool,
    ) -> tuple[torch.Tensor, list[int]]:
        """The head over head rows `[lo, hi)` of each span (tokens `ids`, KV to `locs`, the
        target's features or the head's own `feats`): (each span's last output feature, its
        greedy token)."""
        fb = self._batch(spans, ids, locs)
        self.backend.init_forward_metadata(fb)
        ids = fb.input_ids.clamp(0, self.vocab - 1)  # ids beyond the vocabulary: image pads
        embeds = self.embed(ids).to(self.dtype)
        out = self.head(embeds, fb.positions, feats, fb, from_target)[fb.logit_indices]
        return out, self.head.draft_ids(out, self.target).tolist()

    def _batch(self, spans: list[tuple[Req, int, int]], ids: list[int], locs: list[int]) -> ForwardBatch:
        t, b = len(ids), len(spans)
        lens = [hi - lo for _, lo, hi in spans]
        ends = [hi for _, _, hi in spans]
        last = [sum(lens[: k + 1]) - 1 for k in range(b)]
        positions = [p for _, lo, hi in spans for p in range(lo, hi)]
        pool_idx = [req.req_pool_idx for req, _, _ in spans]
        dev_ids, dev_pos, dev_locs, dev_pool, dev_lens, dev_logit = to_device_split(
            ids + positions + locs + pool_idx + ends + last, (t, t, t, b, b, b), self.pool.k_buffers[0].device
        )
        return ForwardBatch(
            mode=ForwardMode.EXTEND,
            input_ids=dev_ids,
            positions=dev_pos,
            out_cache_loc=dev_locs,
            req_pool_indices=dev_pool,
            seq_lens=dev_lens,
            seq_lens_cpu=ends,
            extend_prefix_lens_cpu=[lo for _, lo, _ in spans],
            extend_seq_lens_cpu=lens,
            logit_indices=dev_logit,
            req_to_token=self.target_table,
        )

    def _release_stale(self) -> None:
        """Drop the features of requests that finished or were retracted (they lost their row)."""
        for rid, f in list(self.features.items()):
            if f.req.finished_reason is not None or f.req.req_pool_idx is None:
                del self.features[rid]


def _final_hidden(hidden: torch.Tensor) -> torch.Tensor:
    """EAGLE-1/-2 features: the target's final-norm hidden states themselves."""
    return hidden
