"""The xgrammar backend compiles a regex as one automaton terminal (`regex_terminal`) instead of
xgrammar's regex-to-rules conversion: the two must allow exactly the same tokens (and force the
same jump-forward text) at every step. Random walks (seeded) through each regex compare the two
bitmasks bit for bit over the vocabulary, step by step."""

from __future__ import annotations

import importlib.util
import random
from typing import Any

import pytest
import torch

from radixlm.constrained.spec import GrammarSpec

pytestmark = pytest.mark.skipif(importlib.util.find_spec("xgrammar") is None, reason="needs xgrammar")

EOS = 1
REGEXES = (
    r"[a-z]{1,16}",
    r"(cat|dog|bird)( and (cat|dog)){0,3}\.",
    r"\{\n  \"name\": \"[A-Za-z ]{1,16}\",\n  \"age\": [0-9]{1,2}\n\}",
    r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}",
    r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    r"a|ab|abc",  # a prefix of one alternative completes another: stop and continue both allowed
    r"^(yes|no)$",
    r"[^\n\"]{2,5}!",
    r"\w+@\w+\.(com|org)",
    r"(ab)*c?",
    r"héllo [ä-ü]{1,3}",
    r"x\\y\"z",
)


def masks_along_walk(tokenizer: Any, regex: str, seed: int) -> int:
    """Walk both compiled forms with the same random allowed tokens; returns the steps taken."""
    import xgrammar

    from radixlm.constrained.xgrammar_backend import XGrammarBackend

    vocab = len(tokenizer)
    backend = XGrammarBackend(tokenizer, vocab, {EOS})
    terminal = backend.new_grammar(backend.compile(GrammarSpec("regex", regex))).matcher
    rules = xgrammar.GrammarMatcher(backend._get_compiler().compile_regex(regex))
    rng = random.Random(seed)
    words = (vocab + 31) // 32
    for step in range(64):
        a, b = torch.zeros(1, words, dtype=torch.int32), torch.zeros(1, words, dtype=torch.int32)
        terminal.fill_next_token_bitmask(a)
        rules.fill_next_token_bitmask(b)
        assert terminal.find_jump_forward_string() == rules.find_jump_forward_string(), (regex, step)
        bits = ((a[0, :, None] >> torch.arange(32)) & 1).flatten()[:vocab]  # ids past the vocabulary: padding
        assert torch.equal(bits, ((b[0, :, None] >> torch.arange(32)) & 1).flatten()[:vocab]), (regex, step)
        allowed = bits.nonzero().flatten().tolist()
        assert allowed, (regex, step)
        going_on = [t for t in allowed if t != EOS]
        token = rng.choice(going_on if going_on and rng.random() < 0.9 else allowed)  # walks of some length
        assert terminal.accept_token(token) and rules.accept_token(token)
        assert terminal.is_terminated() == rules.is_terminated()
        if terminal.is_terminated():
            return step + 1
    return 64


@pytest.mark.parametrize("regex", REGEXES)
def test_regex_terminal_allows_the_same_tokens_as_the_rule_expansion(tiny_tokenizer: Any, regex: str) -> None:
    steps = [masks_along_walk(tiny_tokenizer, regex, seed) for seed in range(4)]
    assert sum(steps) >= 8


def test_terminal_form_is_used_and_is_cheaper_for_counted_repetition(tiny_tokenizer: Any) -> None:
    """The compiled grammar really is the terminal form (else this file tests nothing)."""
    from radixlm.constrained.xgrammar_backend import XGrammarBackend, regex_terminal

    backend = XGrammarBackend(tiny_tokenizer, len(tiny_tokenizer), {EOS})
    compiled = backend.compile(GrammarSpec("regex", r"[a-z]{1,16}"))
    assert "Regex(" in str(compiled.grammar)
    assert regex_terminal('a"b\\c') == 'root ::= Regex("a\\"b\\\\c")'
