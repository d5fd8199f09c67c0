"""Tiny, fully offline artifacts for tests (built in-process, nothing downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% if not (loop.last and continue_final_message) %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_CORPUS = [
    "héllo 世界 🙂",
    "hello world, the quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "héllo héllo wörld naïve café résumé",
    "世界 你好 世界 日本語 テスト",
    "🙂 🙃 😀 emoji 🙂 test 🚀",
    "def main():\n    print('hello')\n    return 0\n",
    "STOP here. ### end of section ###",
    "<|user|> hi <|assistant|> hello there!",
]


def make_tiny_tokenizer(tmp_dir: str | os.PathLike, vocab_size: int = 400) -> str:
    """Train a byte-level BPE tokenizer on a small multilingual corpus and save it.

    Special tokens: ``<s>`` (bos, id 0), ``</s>`` (eos, id 1), ``<pad>`` (id 2).
    A simple chat template is set. Returns the saved directory's path.
    Deterministic: same corpus and vocab size give the same tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    wrapped.chat_template = TINY_CHAT_TEMPLATE
    out = Path(tmp_dir) / "tiny_tokenizer"
    wrapped.save_pretrained(str(out))
    return str(out)
