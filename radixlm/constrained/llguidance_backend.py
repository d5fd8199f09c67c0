"""The llguidance backend: a lazy lexer + Earley parser with fuel limits on every step, which
refuses (rather than ignores) the JSON-schema keywords it does not implement."""

from __future__ import annotations

import threading
from typing import Any, Optional

import torch

from radixlm.constrained import limits
from radixlm.constrained.base import Grammar, GrammarBackend, UnsupportedSpec
from radixlm.constrained.spec import GrammarSpec

# Same output shape as the xgrammar backend: compact JSON with ", " and ": ".
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class LLGuidanceGrammar(Grammar):
    """A request's `llguidance.LLMatcher`."""

    def __init__(self, matcher: Any, fill: Any) -> None:
        self.matcher, self._fill = matcher, fill

    def accept_token(self, token: int) -> bool:
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
                forced = forced[:exc.start]
        return ""

    def copy(self) -> "LLGuidanceGrammar":
        return LLGuidanceGrammar(self.matcher.deep_copy(), self._fill)

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
            return matcher.grammar_from_regex(spec.text)
        if spec.kind == "ebnf":
            limits.check_ebnf_cost(spec.text)
            try:
                return self.llg.grammar_from("ebnf", spec.text)
            except Exception as exc:  # the GBNF converter raises its own error types
                raise ValueError(f"invalid EBNF grammar: {exc}") from None
        schema = spec.schema()
        for pattern in limits.schema_patterns(schema):
            limits.check_regex_cost(pattern, "json_schema pattern")
        return matcher.grammar_from_json_schema(spec.text, defaults=JSON_OPTIONS)

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

                self._lltok = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                           eos_token=sorted(self.eos_ids))
            return self._lltok

    def new_grammar(self, compiled: Any) -> Grammar:
        return LLGuidanceGrammar(compiled.deep_copy(), self._fill)
