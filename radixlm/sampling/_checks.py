"""Small value checks shared by SamplingParams.validate.

Each checker appends "<field>: must be <range> (got <value>)" messages to an
error list instead of raising, so one ValueError can report every problem.
"""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """True for real ints; bool is excluded although it subclasses int."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_real(value: Any) -> bool:
    """True for finite int/float values (bool excluded, NaN/inf excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(errors: list[str], name: str, value: Any, low: int) -> bool:
    """Require an int >= low; return whether it passed."""
    if is_int(value) and value >= low:
        return True
    errors.append(f"{name}: must be an integer >= {low} (got {value!r})")
    return False


def real_in(
    errors: list[str],
    name: str,
    value: Any,
    low: float,
    high: float,
    allowed: str,
    low_open: bool = False,
) -> bool:
    """Require a finite number in [low, high] ((low, high] if low_open); return whether it passed."""
    ok = is_finite_real(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        errors.append(f"{name}: must be {allowed} (got {value!r})")
    return ok


def token_key(key: Any) -> int | None:
    """Parse a logit_bias key: an int or a plain decimal string (JSON keys); None if neither."""
    if is_int(key):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    return None


def logit_bias_errors(bias: Any, vocab_size: int) -> list[str]:
    """Problems with a logit_bias mapping (keys token ids in [0, vocab), values finite)."""
    allowed = f"logit_bias: must be a dict mapping token ids in [0, {vocab_size}) to finite numbers"
    if not isinstance(bias, dict):
        return [f"{allowed} (got {bias!r})"]
    bad_keys = [k for k in bias if (t := token_key(k)) is None or not 0 <= t < vocab_size]
    bad_values = [v for v in bias.values() if not is_finite_real(v)]
    if not bad_keys and not bad_values:
        return []
    return [f"{allowed} (bad keys: {bad_keys!r}, bad values: {bad_values!r})"]
