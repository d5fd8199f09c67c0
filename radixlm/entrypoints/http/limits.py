"""Request limits the HTTP front enforces before any work starts: things a client may send
that are valid in principle but would stall the server (a million samples, thousands of stop
strings). Constraint nesting is bounded for every caller, in-process ones too, by
`SamplingParams` (`radixlm.constrained.limits.nesting_error`)."""

from __future__ import annotations

from typing import Any

MAX_N = 128  # samples per prompt (OpenAI's cap)
MAX_STOPS, MAX_STOP_CHARS = 64, 1024  # stop strings are matched at every step: keep them small


def check_sampling_limits(sampling_params: Any) -> None:
    """Raise ValueError naming the first limit a request's sampling params break."""
    for params in sampling_params if isinstance(sampling_params, list) else [sampling_params]:
        if isinstance(params, dict):
            _check_params(params)


def _check_params(params: dict) -> None:
    n = params.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_N:
        raise ValueError(f"n: at most {MAX_N} samples per prompt (got {n})")
    stop = params.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > MAX_STOPS or any(isinstance(s, str) and len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"stop: at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
