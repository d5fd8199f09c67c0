"""The xgrammar backend (default): Earley-based matcher with cached per-state token masks."""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Optional

import torch

from radixlm.constrained import limits
from radixlm.constrained.base import Grammar, GrammarBackend, UnsupportedSpec
from radixlm.constrained.schema_audit import unenforced_keyword
from radixlm.constrained.schema_rewrite import audited, for_xgrammar
from radixlm.constrained.spec import GrammarSpec

# JSON is generated compactly ('{"a": 1, "b": 2}'): free whitespace lets a model loop on it.
JSON_SEPARATORS = (", ", ": ")
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


def clean_error(exc: BaseException) -> str:
    """xgrammar's message without its C++ source location prefix."""
    return _LOCATION.sub("", str(exc).strip()).strip()


def regex_terminal(regex: str) -> str:
    """An EBNF grammar whose whole language is `regex`, as one regex terminal (the form xgrammar
    gives a JSON schema's `pattern`)."""
    return "root ::= Regex(" + json.dumps(regex, ensure_ascii=False) + ")"


def compile_regex(compiler: Any, regex: str) -> Any:
    """`regex` compiled to one automaton terminal: the same language as `compile_regex` (checked
    mask for mask in tests/unit/test_regex_terminal.py), and its masks are far cheaper to fill
    where a counted repetition (`[a-z]{1,16}`) spans several tokens, which `compile_regex`
    expands into rules whose tokens are checked one by one at every step. A regex the terminal
    form refuses goes through `compile_regex`."""
    try:
        return compiler.compile_grammar(regex_terminal(regex))
    except Exception:  # xgrammar raises RuntimeError (and others); compile_regex reports the error
        return compiler.compile_regex(regex)


class XGrammarGrammar(Grammar):
    """A request's `xgrammar.GrammarMatcher`; `batcher` (an `xgrammar.BatchGrammarMatcher`, shared
    by the backend's grammars) fills several matchers' masks on its threads."""

    def __init__(self, matcher: Any, batcher: Any) -> None:
        self.matcher, self.batcher = matcher, batcher

    def accept_token(self, token: int) -> bool:
        return self.matcher.accept_token(token)

    def fill_vocab_mask(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    @classmethod
    def fill_vocab_masks(cls, grammars: list[Grammar], bitmask: torch.Tensor, rows: list[int]) -> None:
        matchers = [grammar.matcher for grammar in grammars]  # type: ignore[attr-defined]
        grammars[0].batcher.batch_fill_next_token_bitmask(matchers, bitmask, rows)  # type: ignore[attr-defined]

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()

    def try_jump_forward(self) -> str:
        return self.matcher.find_jump_forward_string()

    def copy(self) -> "XGrammarGrammar":
        return XGrammarGrammar(self.matcher.fork(), self.batcher)

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self.matcher.rollback(num_tokens)


class XGrammarBackend(GrammarBackend):
    """Schemas using a keyword xgrammar does not enforce raise UnsupportedSpec (see schema_audit)."""

    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, eos_ids
        self._compiler: Optional[Any] = None
        self._batcher: Optional[Any] = None
        self._lock = threading.Lock()

    def check(self, spec: GrammarSpec) -> None:
        if spec.kind == "regex":
            limits.check_regex_cost(spec.text)
            self._convert(lambda: self.xgr.Grammar.from_regex(spec.text), "regex")
        elif spec.kind == "ebnf":
            limits.check_ebnf_cost(spec.text)
            self._convert(lambda: self.xgr.Grammar.from_ebnf(spec.text), "EBNF grammar")
        else:
            schema = for_xgrammar(spec.schema())
            for pattern in limits.schema_patterns(schema):
                limits.check_regex_cost(pattern, "json_schema pattern")
            problem = unenforced_keyword(audited(spec.schema()))
            if problem:
                raise UnsupportedSpec(f"json_schema keyword not enforced by xgrammar: {problem}")
            self._convert(
                lambda: self.xgr.Grammar.from_json_schema(
                    json.dumps(schema), any_whitespace=False, separators=JSON_SEPARATORS
                ),
                "JSON schema",
            )

    @staticmethod
    def _convert(build: Any, what: str) -> None:
        try:
            build()
        except Exception as exc:  # xgrammar raises RuntimeError (and others) for bad specs
            raise ValueError(f"invalid {what}: {clean_error(exc)}") from None

    def compile(self, spec: GrammarSpec) -> Any:
        compiler = self._get_compiler()
        try:
            if spec.kind == "regex":
                return compile_regex(compiler, spec.text)
            if spec.kind == "ebnf":
                return compiler.compile_grammar(spec.text)
            schema = json.dumps(for_xgrammar(spec.schema()))
            return compiler.compile_json_schema(schema, any_whitespace=False, separators=JSON_SEPARATORS)
        except Exception as exc:
            raise ValueError(f"invalid {spec.describe()}: {clean_error(exc)}") from None

    def _get_compiler(self) -> Any:
        with self._lock:  # built once, on first use (reading the vocabulary takes a while)
            if self._compiler is None:
                info = self.xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=sorted(self.eos_ids)
                )
                self._compiler = self.xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compiler

    def new_grammar(self, compiled: Any) -> Grammar:
        with self._lock:  # its thread pool starts on first use
            if self._batcher is None:
                self._batcher = self.xgr.BatchGrammarMatcher(max_threads="auto")
        return XGrammarGrammar(self.xgr.GrammarMatcher(compiled), self._batcher)
