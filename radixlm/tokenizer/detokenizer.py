"""Streaming text output: incremental detokenization and stop-string matching.

Both classes are per-request and stateful; each step costs O(window), not
O(output length), so the scheduler can call them once per generated token.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

from transformers import PreTrainedTokenizerBase

# Decoders render a multi-byte character cut across tokens (or bytes that are not
# UTF-8) as U+FFFD; at the end of the text it may still turn into a real char.
_REPLACEMENT = "\ufffd"

DecodeFn = Callable[[list[int]], str]


def _make_decode_fn(
    tokenizer: PreTrainedTokenizerBase,
    skip_special_tokens: bool,
    spaces_between_special_tokens: bool,
) -> DecodeFn:
    """Decode without ``clean_up_tokenization_spaces``: that post-pass rewrites text
    before later tokens (" ." -> ".") so it cannot be streamed. It is off by default
    in transformers 5 (and ignored for BPE), so this matches ``tokenizer.decode``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Fast tokenizers ignore spaces_between_special_tokens; skipping the
        # Python wrapper saves most of the per-call overhead.
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(
        ids,
        skip_special_tokens=skip_special_tokens,
        spaces_between_special_tokens=spaces_between_special_tokens,
        clean_up_tokenization_spaces=False,
    )


class WindowDecoder:
    """Decodes token windows for one tokenizer and one set of options; one instance may serve
    every request that decodes with those options (pass it to each IncrementalDetokenizer).

    Invariant: ``text_len(ids) == len(decode(ids))``. The length of a single token's text is a
    pure function of its id, so it is remembered (at most one entry per vocabulary id): after
    each token that completes a character a detokenizer measures the window it slides to, and
    that window is usually just that token.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.decode = _make_decode_fn(tokenizer, skip_special_tokens, spaces_between_special_tokens)
        self._single_lens: dict[int, int] = {}

    def text_len(self, ids: list[int]) -> int:
        if len(ids) != 1:
            return len(self.decode(ids))
        n = self._single_lens.get(ids[0])
        if n is None:
            n = self._single_lens[ids[0]] = len(self.decode(ids))
        return n


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Invariants:
      * ``"".join(deltas) + flush() == tokenizer.decode(ids, skip_special_tokens=...)``
        for every sequence on byte-level tokenizers (lossy UTF-8), and for every
        well-formed sequence on byte-fallback ones (which can re-render already
        complete chars as U+FFFD when an invalid byte follows).
      * A delta never ends in U+FFFD (a possibly unfinished multi-byte char is held
        back until it completes or ``flush()`` is called).
      * Each ``append`` decodes only the window ``ids[prefix_offset:]``, which starts
        at the last point where the text ended on a complete character.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        decoder: WindowDecoder | None = None,
    ) -> None:
        """`decoder`: a shared WindowDecoder built with the same tokenizer and options (None: own one)."""
        self._decoder = decoder or WindowDecoder(tokenizer, skip_special_tokens, spaces_between_special_tokens)
        self._decode = self._decoder.decode
        self._ids: list[int] = []
        # Window start: tokens before it never affect new text again.
        self._prefix_offset = 0
        # End of the last window whose text ended on a complete character.
        self._read_offset = 0
        # Chars of decode(ids[prefix_offset:]) already emitted.
        self._emitted_in_window = 0
        self._chunks: list[str] = []
        self._flushed = False

    @property
    def token_ids(self) -> list[int]:
        """All ids appended so far (a copy)."""
        return list(self._ids)

    @property
    def text(self) -> str:
        """All text emitted so far (the concatenation of every returned delta)."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    @property
    def window_tokens(self) -> int:
        """Number of tokens the next ``append`` re-decodes (besides its new ones).

        Stays small (the last chunk plus any unfinished char) for valid text."""
        return len(self._ids) - self._prefix_offset

    def append(self, token_ids: list[int]) -> str:
        """Add newly generated tokens; return the new text they complete (maybe "")."""
        if self._flushed:
            raise RuntimeError("append() after flush()")
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        window_text = self._decode(self._ids[self._prefix_offset :])
        stable = window_text.rstrip(_REPLACEMENT)
        # Text before the trailing U+FFFD run ends in a complete char; UTF-8 is
        # self-synchronizing, so later bytes cannot change it and it is safe to emit.
        delta = stable[self._emitted_in_window :]
        if delta:
            self._emitted_in_window = len(stable)
            self._chunks.append(delta)
        if len(stable) == len(window_text):
            self._advance_window()
        return delta

    def _advance_window(self) -> None:
        """The text ends on a complete char: slide the window to the newest chunk.

        The new window keeps the last chunk as left context for decoders whose
        rendering of a token depends on its predecessor (e.g. leading-space rules)."""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._emitted_in_window = self._decoder.text_len(self._ids[self._prefix_offset :])

    def flush(self) -> str:
        """End of stream: return any held-back text (e.g. a truncated char as U+FFFD)."""
        if self._flushed:
            return ""
        self._flushed = True
        rest = self._decode(self._ids[self._prefix_offset :])[self._emitted_in_window :]
        if rest:
            self._chunks.append(rest)
        return rest


class StopCheck(NamedTuple):
    """Result of a stop-string check over the output text seen so far.

    ``stop_index``: if not None, a stop string starts there; the final output is
    ``text[:stop_index]`` (stop string excluded) and generation must end.
    ``hold_back``: number of trailing chars that may begin a stop string and must
    not be streamed yet (0 when ``stop_index`` is set).
    """

    stop_index: int | None
    hold_back: int


class StopStringMatcher:
    """Finds stop strings in streamed text, across token/delta boundaries.

    Feed it either deltas (``feed``) or the whole text so far (``process``); each
    call scans only the last ``len(delta) + max_stop_len - 1`` chars, since an
    earlier match would have been reported by an earlier call. Once a stop is
    found the result is sticky. Empty stop strings are ignored.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop if s))
        self._max_len = max((len(s) for s in self._stops), default=0)
        # Proper prefixes of stop strings: a text suffix equal to one must be held.
        self._prefixes = frozenset(s[:k] for s in self._stops for k in range(1, len(s)))
        self._tail = ""  # last max_len - 1 chars seen
        self._seen = 0  # total chars seen
        self._result = StopCheck(None, 0)

    @property
    def stops(self) -> tuple[str, ...]:
        """The (deduplicated, non-empty) stop strings."""
        return self._stops

    @property
    def chars_seen(self) -> int:
        """Total length of the text fed so far."""
        return self._seen

    def process(self, text_so_far: str) -> StopCheck:
        """Check the full output text so far; it must extend the previous call's text."""
        if len(text_so_far) < self._seen:
            raise ValueError("text_so_far is shorter than text already processed")
        return self.feed(text_so_far[self._seen :])

    def feed(self, delta: str) -> StopCheck:
        """Check the text after appending ``delta`` (indices are into the full text)."""
        if self._result.stop_index is not None or not self._stops:
            self._seen += len(delta)
            return self._result
        region = self._tail + delta
        base = self._seen - len(self._tail)
        self._seen += len(delta)
        hit = self._earliest_match(region)
        if hit is not None:
            self._result = StopCheck(base + hit, 0)
            return self._result
        keep = self._max_len - 1
        self._tail = region[-keep:] if keep else ""
        self._result = StopCheck(None, self._partial_suffix_len(region))
        return self._result

    def _earliest_match(self, region: str) -> int | None:
        positions = [i for i in (region.find(s) for s in self._stops) if i >= 0]
        return min(positions) if positions else None

    def _partial_suffix_len(self, region: str) -> int:
        """Length of the longest suffix of ``region`` that starts some stop string."""
        for k in range(min(self._max_len - 1, len(region)), 0, -1):
            if region[-k:] in self._prefixes:
                return k
        return 0
