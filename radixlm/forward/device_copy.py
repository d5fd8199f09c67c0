"""Host lists to device tensors without stalling the host.

PyTorch's ordinary host-to-device copy (`torch.tensor(x, device="cuda")`, or assigning a CPU
tensor into a CUDA one) synchronizes the stream, so the scheduler would wait for the batch the
GPU is running before it could prepare the next one. `to_device` stages the values in pinned
memory and copies without blocking; the caching host allocator keeps the staging buffer alive
until the copy has run. On the CPU it is the host tensor itself.

Every copy has a fixed cost on the host (pinning, launching it), so per-step data goes best as
few, larger copies: `to_device_split` sends several int64 lists in one copy and hands back views.
"""

from __future__ import annotations

import array
from typing import Sequence

import torch

# Through `array.array` a Python list becomes a tensor ~4x faster than through `torch.tensor`
# (which inspects every element); same values (a C cast per element, as torch.tensor does).
_ARRAY_TYPECODES = {torch.int64: "q", torch.float32: "f"}
_ALIGN_ELEMS = 2  # int64 elements per 16 bytes


def host_tensor(
    values: Sequence[int] | Sequence[float] | Sequence[bool], dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """`torch.tensor(values, dtype=dtype)` on the CPU, faster for int64 and float32 lists.
    int64 values must be ints (or bools): a float raises TypeError instead of being truncated."""
    code = _ARRAY_TYPECODES.get(dtype)
    if code is None or len(values) == 0:
        return torch.tensor(values, dtype=dtype)
    return torch.frombuffer(array.array(code, values), dtype=dtype)


def to_device(
    values: Sequence[int] | Sequence[float] | Sequence[bool], device: torch.device, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    return pinned_to_device(host_tensor(values, dtype), device)


def to_device_split(values: Sequence[int], sizes: Sequence[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """int64 `values` cut into consecutive parts of `sizes` (summing to len(values)), on `device`
    in ONE copy: the parts are views of one buffer, so callers must not write into them.

    Every part starts on a 16-byte boundary: Triton specializes a kernel on whether each pointer
    argument is 16-byte aligned, so parts at odd offsets would compile new kernel variants
    (hundreds of ms each) in the middle of serving whenever a batch size changes parity."""
    host = host_tensor(values)
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size + (-size) % _ALIGN_ELEMS)
    if starts[-1] + sizes[-1] != len(values):  # some part would start misaligned: spread them out
        padded = torch.zeros(starts[-1] + sizes[-1], dtype=torch.int64)
        src = 0
        for start, size in zip(starts, sizes):
            padded[start : start + size] = host[src : src + size]
            src += size
        host = padded
    dev = pinned_to_device(host, device)
    return tuple(dev[start : start + size] for start, size in zip(starts, sizes))


def to_device_rows(values: Sequence[int], rows: int, device: torch.device) -> torch.Tensor:
    """int64 `values` (rows * n of them, row after row) as a [rows, n] tensor on `device` in ONE
    copy; each row starts on a 16-byte boundary (see `to_device_split`), so the tensor's row
    stride is n rounded up to even. The tensor is the caller's own (a fresh buffer)."""
    n = len(values) // rows
    if n * rows != len(values):
        raise ValueError(f"{len(values)} values do not make {rows} equal rows")
    stride = n + (-n) % _ALIGN_ELEMS
    host = torch.nn.functional.pad(host_tensor(values).view(rows, n), (0, stride - n))
    return pinned_to_device(host, device)[:, :n]


def pinned_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`, copied through pinned memory without blocking (itself on CPU)."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
