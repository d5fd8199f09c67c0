"""Reading sampled token ids back to the host without stalling the launch of the next batch.

`start(ids)` begins the copy and returns a function that, when called, waits for it and
returns the ids as a list. On CUDA the copy goes to pinned memory asynchronously and is
waited on through an event, so the scheduler can queue the next batch in between; on the CPU
the ids are already there.
"""

from __future__ import annotations

from typing import Callable

import torch

Result = Callable[[], list[int]]


def make_host_copy(device: torch.device) -> Callable[[torch.Tensor], Result]:
    return _cuda_copy if device.type == "cuda" else _cpu_copy


def _cpu_copy(ids: torch.Tensor) -> Result:
    return ids.tolist


def _cuda_copy(ids: torch.Tensor) -> Result:
    host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
    host.copy_(ids, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def result() -> list[int]:
        done.synchronize()
        return host.tolist()

    return result
