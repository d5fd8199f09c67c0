"""`TPGroup`: one rank's handle on its tensor-parallel group, passed explicitly to the layers."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

LEAVE_WAIT_S = 5.0
_LEFT_KEY = "radixlm/ranks_left"


def _all_gather_flat() -> Callable[..., Any]:
    """torch >= 2.12 names it `all_gather_single`; older releases `all_gather_into_tensor`."""
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class TPGroup:
    """Rank `rank` of `size` ranks that split every layer between them.

    Invariant: all ranks call the same collectives in the same order on tensors of the same
    shape (rank 0 decides each batch, the others run the same forward on their shard). With
    `size == 1` there is no process group and layers are built without any collective."""

    def __init__(self, rank: int, size: int, group: Optional[Any] = None, store: Optional[Any] = None) -> None:
        self.rank, self.size, self.group, self.store = rank, size, group, store
        self._gather_flat = _all_gather_flat()

    @classmethod
    def single(cls) -> "TPGroup":
        return cls(0, 1, None)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place; returns `x`."""
        dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` [..., n] along the last dim, rank order: [..., size * n]."""
        flat = torch.empty((self.size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        self._gather_flat(flat, x.contiguous(), group=self.group)
        return flat.view(self.size, *x.shape).movedim(0, -2).reshape(*x.shape[:-1], self.size * x.shape[-1])

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's `x` into every rank's `x`, in place."""
        dist.broadcast(x, src=0, group=self.group)
        return x

    def min_int(self, value: int, device: torch.device) -> int:
        """The smallest `value` over the ranks (used to agree on sizes at start-up)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())

    def destroy(self) -> None:
        """Leave the group. Followers then count themselves out on the store; rank 0, which
        hosts the store, waits (at most LEAVE_WAIT_S) until they have, so that no rank loses
        the store while it is still shutting down."""
        if self.group is None:
            return
        try:
            _teardown(self.group)
        except RuntimeError as exc:  # leaving anyway: the process is about to exit
            logger.warning("tensor-parallel rank %d: process group teardown failed: %s", self.rank, exc)
        self.group = None
        if self.store is None:
            return
        try:
            if self.rank != 0:
                self.store.add(_LEFT_KEY, 1)
                return
            deadline = time.monotonic() + LEAVE_WAIT_S
            while self.store.add(_LEFT_KEY, 0) < self.size - 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        except (RuntimeError, OSError):  # rank 0 (and its store) already gone: nothing to tell
            pass


def _teardown(group: Any) -> None:
    """NCCL: abort the communicators (local and immediate). A graceful destroy_process_group()
    was seen to block both ranks (still blocked after 8 s) once CUDA graphs had captured
    collectives (torch 2.11, two H200s); gloo: destroy_process_group()."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if dist.get_backend(group) == "nccl" and abort is not None:
        abort()
    else:
        dist.destroy_process_group()
