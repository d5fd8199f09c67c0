"""The regex constructions of radixlm/constrained/schema_patterns.py, checked against Python's `re`
(which `jsonschema` uses for `pattern`) on hypothesis-generated strings."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixlm.constrained.schema_patterns import matches_every_string, outside_class_run, outside_strings

TEXT = st.text(alphabet=st.sampled_from("ab-.\n x\\]^é"), max_size=6) | st.text(max_size=4)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.mark.parametrize("pattern", ["^[a-zA-Z0-9_]*", ".*", "", "(?:x|)", "^\\w*"])
def test_universal_patterns_match_every_string(pattern: str) -> None:
    assert matches_every_string(pattern)

    @SETTINGS
    @given(TEXT)
    def check(text: str) -> None:
        assert re.search(pattern, text)

    check()


@pytest.mark.parametrize("pattern", ["^[a-z]*$", "a*b", "\\b", "(?=a)?", "^a*\\Z", "x*$", "(?i)a*", "[", "a+"])
def test_patterns_that_may_miss_a_string_are_not_called_universal(pattern: str) -> None:
    assert not matches_every_string(pattern)


@SETTINGS
@given(st.lists(TEXT, min_size=1, max_size=5), TEXT)
def test_outside_strings_matches_exactly_the_other_strings(values: list[str], text: str) -> None:
    pattern = outside_strings(values)
    if pattern is None:
        assert any(v.endswith("\n") for v in values)
        return
    for candidate in (text, *values, *(v + text for v in values), *(v[:-1] for v in values)):
        assert bool(re.search(pattern, candidate)) == (candidate not in values), (values, candidate)


@pytest.mark.parametrize("pattern", ["^[\\s.,*-]+$", "^[^ab]*$", "^[\\s\\S]+$"])
def test_outside_class_run_is_the_complement(pattern: str) -> None:
    found = outside_class_run(pattern)
    assert found is not None
    outside, empty_too = found

    @SETTINGS
    @given(TEXT)
    def check(text: str) -> None:
        complement = bool(re.search(outside, text)) or (empty_too and text == "")
        assert complement != bool(re.search(pattern, text)), text

    check()


@pytest.mark.parametrize("pattern", ["^[a-z]+$", "^[ab]+", "^a+$", "^[\\s]+$x"])
def test_outside_class_run_declines_other_patterns(pattern: str) -> None:
    assert outside_class_run(pattern) is None  # [a-z] lacks the newline Python's `$` lets through
