"""Tokenizer loading, chat templates, streaming detokenization and stop strings."""

from radixlm.tokenizer.detokenizer import IncrementalDetokenizer, StopCheck, StopStringMatcher
from radixlm.tokenizer.loader import (
    apply_chat_template,
    bundled_gguf_path,
    cache_root,
    eos_token_ids,
    gguf_tokenizer_cache_path,
    load_tokenizer,
)

__all__ = [
    "IncrementalDetokenizer",
    "StopCheck",
    "StopStringMatcher",
    "apply_chat_template",
    "bundled_gguf_path",
    "cache_root",
    "eos_token_ids",
    "gguf_tokenizer_cache_path",
    "load_tokenizer",
]
