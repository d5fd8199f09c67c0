"""Per-request sampling parameters (SGLang field names and defaults).

A `SamplingParams` is a plain record until `validate(vocab_size)` has been
called; the sampler assumes validated (and therefore normalized) params.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from radixlm.constrained.limits import nesting_error
from radixlm.sampling import _checks as chk

# Temperatures below this are treated as greedy decoding (argmax); dividing
# logits by a near-zero temperature would overflow anyway.
GREEDY_TEMPERATURE_EPS = 1e-6

_BOOL_FIELDS = (
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "json_schema_max_tokens_close",
)
_CONSTRAINT_FIELDS = ("regex", "json_schema", "ebnf")
_SERVER_SET = frozenset({"reasoning_gate"})  # fields a request may not set


@dataclass
class SamplingParams:
    """Sampling configuration of one request.

    Field semantics:
      max_new_tokens: hard cap on generated tokens (>= 0).
      min_new_tokens: EOS / stop_token_ids are banned until this many tokens
        have been generated (0 <= min_new_tokens <= max_new_tokens).
      temperature: logits are divided by it; < 1e-6 (incl. 0) means greedy.
      top_p: nucleus mass in (0, 1]; 1 = off.
      top_k: -1 = off, otherwise >= 1; values above the vocab size act as off.
        0 is rejected (ambiguous between "off" and "nothing").
      min_p: in [0, 1]; drops tokens with prob < min_p * max prob; 0 = off.
      repetition_penalty: > 0; 1 = off (HF semantics over generated tokens).
      frequency_penalty, presence_penalty: in [-2, 2]; 0 = off.
      stop: stop strings; a single string is normalized to a one-item list.
      stop_token_ids: token ids that end generation, each in [0, vocab).
      ignore_eos: EOS does not end generation (and is not banned by
        min_new_tokens, since it cannot end the request early).
      skip_special_tokens, spaces_between_special_tokens: detokenizer options.
      n: number of completions (>= 1).
      seed: per-request seed; None = unseeded.
      logit_bias: token id (int, or decimal string as in JSON) -> additive bias;
        keys are normalized to int.
      regex, json_schema, ebnf: structured-output constraints (radixlm.constrained);
        at most one may be set. json_schema may be given as an object; it is
        normalized to JSON text (key order kept: it is the order of generation).
      no_stop_trim: keep the matched stop string/token in the output.
      json_schema_max_tokens_close: with json_schema, close the JSON validly when the token
        budget (max_new_tokens) is nearly spent, where the schema allows (off by default;
        radixlm.constrained.budget_close says how).
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    n: int = 1
    seed: int | None = None
    logit_bias: dict[str | int, float] | None = None
    regex: str | None = None
    json_schema: str | dict | None = None
    ebnf: str | None = None
    no_stop_trim: bool = False
    json_schema_max_tokens_close: bool = False
    # Set by the server, never from a request: a reasoning model's constraint starts after its
    # reasoning section (radixlm.constrained.reasoning_gate.ReasoningGate).
    reasoning_gate: Any = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingParams:
        """Build from a request dict. Unknown keys raise ValueError naming them.

        Values are not checked here; call `validate(vocab_size)` afterwards.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"sampling params must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - _SERVER_SET
        unknown = sorted(repr(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def is_greedy(self) -> bool:
        """True when decoding is deterministic argmax (temperature ~0 or top_k == 1)."""
        return self.temperature < GREEDY_TEMPERATURE_EPS or self.top_k == 1

    def validate(self, vocab_size: int) -> None:
        """Check every field and normalize in place; raise one ValueError listing all problems.

        Each problem is reported as "<field>: must be <allowed range> (got <value>)".
        bool is never accepted as a number, NaN/inf never as a float.
        On success: stop is None or list[str], stop_token_ids is None or
        list[int], logit_bias is None or dict[int, float], float fields are float.
        On failure the object is left unchanged.
        """
        if not chk.is_int(vocab_size) or vocab_size < 1:
            raise ValueError(f"vocab_size: must be an integer >= 1 (got {vocab_size!r})")
        errors: list[str] = []
        self._check_numbers(errors)
        self._check_token_fields(vocab_size, errors)
        self._check_text_fields(errors)
        if errors:
            raise ValueError("invalid sampling params: " + "; ".join(errors))
        self._normalize()

    def _check_numbers(self, errors: list[str]) -> None:
        max_ok = chk.int_at_least(errors, "max_new_tokens", self.max_new_tokens, 0)
        chk.int_at_least(errors, "n", self.n, 1)
        if chk.int_at_least(errors, "min_new_tokens", self.min_new_tokens, 0):
            # Compare only against a valid max; a bad max is already reported.
            if max_ok and self.min_new_tokens > self.max_new_tokens:
                errors.append(
                    f"min_new_tokens: must be <= max_new_tokens ({self.max_new_tokens}) (got {self.min_new_tokens})"
                )
        if not (chk.is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1)):
            errors.append(f"top_k: must be -1 (off) or an integer >= 1 (got {self.top_k!r})")
        chk.real_in(errors, "temperature", self.temperature, 0.0, math.inf, "a finite number >= 0")
        chk.real_in(errors, "top_p", self.top_p, 0.0, 1.0, "a number in (0, 1]", low_open=True)
        chk.real_in(errors, "min_p", self.min_p, 0.0, 1.0, "a number in [0, 1]")
        chk.real_in(
            errors,
            "repetition_penalty",
            self.repetition_penalty,
            0.0,
            math.inf,
            "a finite number > 0",
            low_open=True,
        )
        for name in ("frequency_penalty", "presence_penalty"):
            chk.real_in(errors, name, getattr(self, name), -2.0, 2.0, "a number in [-2, 2]")
        if self.seed is not None and not chk.is_int(self.seed):
            errors.append(f"seed: must be an integer or None (got {self.seed!r})")

    def _check_token_fields(self, vocab_size: int, errors: list[str]) -> None:
        ids = self.stop_token_ids
        if ids is not None:
            if not isinstance(ids, (list, tuple)):
                errors.append(f"stop_token_ids: must be a list of token ids or None (got {ids!r})")
            else:
                bad = [t for t in ids if not (chk.is_int(t) and 0 <= t < vocab_size)]
                if bad:
                    errors.append(f"stop_token_ids: must be integers in [0, {vocab_size}) (bad ids: {bad!r})")
        if self.logit_bias is not None:
            errors.extend(chk.logit_bias_errors(self.logit_bias, vocab_size))

    def _check_text_fields(self, errors: list[str]) -> None:
        stop = self.stop
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and not (
            isinstance(stops, (list, tuple)) and all(isinstance(s, str) and s for s in stops)
        ):
            errors.append(f"stop: must be a non-empty string, a list of them, or None (got {stop!r})")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                errors.append(f"{name}: must be a bool (got {value!r})")
        set_constraints = []
        for name in _CONSTRAINT_FIELDS:
            value = getattr(self, name)
            if name == "json_schema" and isinstance(value, (dict, bool)):
                set_constraints.append(name)  # a schema object (true/false are schemas too)
            elif value is not None and not isinstance(value, str):
                errors.append(f"{name}: must be a string or None (got {type(value).__name__})")
            elif value is not None:
                set_constraints.append(name)
        if self.json_schema_max_tokens_close is True and self.json_schema is None:
            errors.append("json_schema_max_tokens_close: needs json_schema (it closes a JSON output)")
        if len(set_constraints) > 1:
            errors.append(f"{', '.join(set_constraints)}: at most one of regex, json_schema, ebnf may be set")
        for name in set_constraints:  # before anything parses or serializes them recursively
            error = nesting_error(name, getattr(self, name))
            if error:
                errors.append(error)

    def _normalize(self) -> None:
        # Only called after a clean validation, so every conversion is safe.
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            self.json_schema = json.dumps(self.json_schema)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            setattr(self, name, float(getattr(self, name)))
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is not None:
            self.stop = list(self.stop)
        if self.stop_token_ids is not None:
            self.stop_token_ids = list(self.stop_token_ids)
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
