"""Deterministic per-step seeds for seeded requests.

A seeded request must produce the same tokens no matter which other requests
share its batch, so each decode step gets its own seed derived only from the
request seed and the number of tokens it has generated so far.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # SplitMix64 finalizer: cheap, well-mixed, and stable across Python runs
    # (unlike hash() of strings, which is salted per process).
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_step_seed(seed: int, num_generated: int) -> int:
    """Seed for the step that produces token number `num_generated` (0-based).

    Returns an int in [0, 2**64), a pure function of its arguments; usable
    directly as `SamplingBatch.build(step_seeds=...)` entries.
    """
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (num_generated & _MASK64))
