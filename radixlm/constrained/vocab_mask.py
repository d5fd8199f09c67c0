"""The batch's grammar masks as one packed tensor, filled only for the rows that have a grammar."""

from __future__ import annotations

from typing import Any, Optional

import torch


class VocabMask:
    """Invariant: a filled bitmask never allows an id at or past the tokenizer's vocabulary in a
    constrained row (the model's vocabulary may be padded past it), 32 token ids per int32 word.
    `fill` has one row per constrained request (for callers that mask a subset of rows);
    `fill_batch` has one row per request of the batch, all ones for a request without a grammar."""

    def __init__(self, model_vocab: int, tokenizer_vocab: int, device: Optional[torch.device] = None) -> None:
        self.words = (model_vocab + 31) // 32
        self.device = device if device is not None else torch.device("cpu")
        self.valid: Optional[torch.Tensor] = None
        self._host: Optional[torch.Tensor] = None  # fill_batch's buffer, grown on demand
        self._uploaded: Any = None  # CUDA event: the last upload from `_host` is done
        if tokenizer_vocab < model_vocab:
            allowed = torch.zeros(self.words * 32, dtype=torch.int64)
            allowed[:tokenizer_vocab] = 1
            weights = torch.tensor([1 << j for j in range(32)], dtype=torch.int64)
            packed = (allowed.view(self.words, 32) * weights).sum(-1)
            self.valid = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)

    def fill(self, reqs: list[Any]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(bitmask [R, words], row indices [R]) for the R requests with a grammar, or None."""
        rows = [i for i, req in enumerate(reqs) if req.grammar is not None]
        if not rows:
            return None
        bitmask = torch.zeros((len(rows), self.words), dtype=torch.int32)
        for k, i in enumerate(rows):
            reqs[i].grammar.fill_vocab_mask(bitmask, k)
        if self.valid is not None:
            bitmask &= self.valid
        return bitmask, torch.tensor(rows, dtype=torch.int64)

    def fill_batch(self, reqs: list[Any]) -> Optional[torch.Tensor]:
        """Bitmask [len(reqs), words] on `device` (row i: request i), or None when no unfinished
        request has a grammar. A finished request's row allows everything (its token is dropped).
        Filled on the host in one buffer kept across calls (pinned on CUDA, where its upload is
        queued without waiting; on the CPU the buffer itself is returned: valid until the next
        call). Nothing here waits for work queued on the device after the previous upload."""
        grammars = [req.grammar if req.finished_reason is None else None for req in reqs]
        rows = [i for i, grammar in enumerate(grammars) if grammar is not None]
        if not rows:
            return None
        host = self._host_buffer(len(reqs))
        if len(rows) < len(reqs):
            host.fill_(-1)  # rows without a grammar allow everything: masking leaves them as they are
        by_kind: dict[type, tuple[list[Any], list[int]]] = {}  # one batched fill per grammar class
        for i in rows:
            kind = by_kind.setdefault(type(grammars[i]), ([], []))
            kind[0].append(grammars[i])
            kind[1].append(i)
        for cls, (group, at) in by_kind.items():
            cls.fill_vocab_masks(group, host, at)
        if self.valid is not None:
            if len(rows) < len(reqs):
                host[rows] &= self.valid
            else:
                host &= self.valid
        if self.device.type != "cuda":
            return host.to(self.device)
        on_device = host.to(self.device, non_blocking=True)
        self._uploaded = torch.cuda.Event()
        self._uploaded.record()
        return on_device

    def _host_buffer(self, rows: int) -> torch.Tensor:
        """The first `rows` rows of the reused host buffer, once its previous upload is done."""
        if self._uploaded is not None:
            self._uploaded.synchronize()
            self._uploaded = None
        if self._host is None or self._host.shape[0] < rows:
            size = max(rows, 2 * self._host.shape[0] if self._host is not None else 16)
            self._host = torch.empty((size, self.words), dtype=torch.int32, pin_memory=self.device.type == "cuda")
        return self._host[:rows]
