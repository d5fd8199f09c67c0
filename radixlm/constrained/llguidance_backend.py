"""The llguidance backend: a lazy lexer + Earley parser with fuel limits on every step, which
refuses (rather than ignores) the JSON-schema keywords it does not implement."""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

import torch

from radixlm.constrained import limits
from radixlm.constrained.base import Grammar, GrammarBackend, UnsupportedSpec
from radixlm.constrained.schema_lower import lower_schema
from radixlm.constrained.schema_walk import non_pointer_ref, walk
from radixlm.constrained.spec import GrammarSpec

# Same output shape as the xgrammar backend: compact JSON with ", " and ": ".
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


_ASCII = {"d": "0-9", "w": "0-9A-Za-z_"}


def ascii_classes(regex: str) -> str:
    """`\\d` and `\\w` as ASCII classes, as xgrammar (and most users) read them; llguidance's
    regex engine would otherwise admit every Unicode digit and letter."""
    out, i, in_class = [], 0, False
    while i < len(regex):
        ch = regex[i]
        if ch == "\\" and i + 1 < len(regex):
            nxt = regex[i + 1]
            if nxt in _ASCII:
                out.append(_ASCII[nxt] if in_class else f"[{_ASCII[nxt]}]")
            else:
                out.append(regex[i : i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class and out and out[-1] != "[":
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)


class LLGuidanceGrammar(Grammar):
    """A request's `llguidance.LLMatcher`."""

    def __init__(self, matcher: Any, fill: Any, eos_ids: set[int]) -> None:
        self.matcher, self._fill, self.eos_ids = matcher, fill, eos_ids

    def accept_token(self, token: int) -> bool:
        if token in self.eos_ids and self.matcher.is_accepting():
            return self.matcher.consume_token(token)  # validate_tokens does not count a final EOS
        if self.matcher.validate_tokens([token]) != 1:
            return False  # checked first: a failed consume would leave the matcher in error
        return self.matcher.consume_token(token)

    def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
        self._fill(self.matcher, bitmask, row)

    def is_terminated(self) -> bool:
        return self.matcher.is_stopped()

    def try_jump_forward(self) -> str:
        forced = self.matcher.compute_ff_bytes()
        while forced:  # keep whole characters only; the rest is forced again next step
            try:
                return forced.decode("utf-8")
            except UnicodeDecodeError as exc:
                forced = forced[: exc.start]
        return ""

    def copy(self) -> "LLGuidanceGrammar":
        return LLGuidanceGrammar(self.matcher.deep_copy(), self._fill, self.eos_ids)

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self.matcher.rollback(num_tokens)


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        import llguidance
        import llguidance.torch

        self.llg, self._fill = llguidance, llguidance.torch.fill_next_token_bitmask
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, eos_ids
        self._lltok: Optional[Any] = None
        self._lock = threading.Lock()

    def to_grammar(self, spec: GrammarSpec) -> str:
        """The spec as an llguidance grammar (not yet validated)."""
        matcher = self.llg.LLMatcher
        if spec.kind == "regex":
            limits.check_regex_cost(spec.text)
            return matcher.grammar_from_regex(ascii_classes(spec.text))
        if spec.kind == "ebnf":
            limits.check_ebnf_cost(spec.text)
            try:
                return self.llg.grammar_from("ebnf", spec.text)
            except Exception as exc:  # the GBNF converter raises its own error types
                raise ValueError(f"invalid EBNF grammar: {exc}") from None
        schema = lower_schema(spec.schema())
        if schema is False:
            raise ValueError("invalid json_schema: no value is valid under it")
        schema = {} if schema is True else schema
        ref = non_pointer_ref(schema)
        if ref is not None:
            raise UnsupportedSpec(f"json_schema keyword $ref to {ref!r}, not a local JSON pointer")
        if any(isinstance(n.get("multipleOf"), float) and not n["multipleOf"].is_integer() for n in walk(schema)):
            # llguidance's decimal arithmetic and jsonschema's float division disagree (7815.19 / 0.0001)
            raise UnsupportedSpec("json_schema keyword multipleOf with a fractional value")
        for pattern in limits.schema_patterns(schema):
            limits.check_regex_cost(pattern, "json_schema pattern")
        return matcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)

    def check(self, spec: GrammarSpec) -> None:
        error = self.llg.LLMatcher.validate_grammar(self.to_grammar(spec), None)
        if error:
            kind = UnsupportedSpec if "Unimplemented" in error else ValueError
            raise kind(f"invalid {spec.describe()} for llguidance: {error.strip()}")

    def compile(self, spec: GrammarSpec) -> Any:
        """A matcher at the start state, copied for each request (building one parses the grammar)."""
        prototype = self.llg.LLMatcher(self._get_tokenizer(), self.to_grammar(spec))
        if prototype.is_error():
            raise ValueError(f"invalid {spec.describe()} for llguidance: {prototype.get_error().strip()}")
        return prototype

    def _get_tokenizer(self) -> Any:
        with self._lock:
            if self._lltok is None:
                import llguidance.hf

                self._lltok = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids)
                )
            return self._lltok

    def new_grammar(self, compiled: Any) -> Grammar:
        return LLGuidanceGrammar(compiled.deep_copy(), self._fill, self.eos_ids)
