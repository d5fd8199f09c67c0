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
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    wrapped.chat_template = TINY_CHAT_TEMPLATE
    out = Path(tmp_dir) / "tiny_tokenizer"
    wrapped.save_pretrained(str(out))
    return str(out)


TINY_ARCHS = ("llama", "llama_tied", "mistral", "qwen2", "qwen3")


# The tiny text model's shape (2 layers, hidden 64, GQA 4/2); `initializer_range` is raised from 0.02
# so logits are peaked enough that greedy choices are not decided by float rounding. The tiny
# LLaVA models' language halves use it too.
TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.15,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
)


def tiny_config(arch: str, vocab_size: int) -> object:
    """A 2-layer, hidden-64 config of `arch` with GQA (4 query heads, 2 KV heads) (the MoE
    architectures: helpers.tiny_moe).

    `initializer_range` is raised from 0.02 so logits are peaked enough that greedy
    choices are not decided by float rounding."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    from helpers.tiny_moe import TINY_MOE_ARCHS, tiny_moe_config

    if arch in TINY_MOE_ARCHS:
        return tiny_moe_config(arch, vocab_size)
    common = dict(vocab_size=vocab_size, **TINY_TEXT)
    if arch == "llama":
        rope = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 10000.0,
        }
        return LlamaConfig(**common, rope_parameters=rope, tie_word_embeddings=False)
    if arch == "llama_tied":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=16, tie_word_embeddings=False)
    raise ValueError(arch)


def make_tiny_model(tmp_dir: str | os.PathLike, arch: str = "llama", seed: int = 0) -> str:
    """Save a random tiny HF model of `arch` (safetensors, float32; norm weights too) with the
    tiny tokenizer into one directory and return its path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(tmp_dir) / f"tiny_{arch}"
    tok_dir = make_tiny_tokenizer(Path(tmp_dir) / f"tok_{arch}")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config = tiny_config(arch, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF starts RMS norm weights at 1: random ones make a dropped norm weight show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)


def load_hf_model(path: str) -> object:
    """The reference: the same checkpoint in HF transformers, float32, eval mode, eos disabled."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model


def hf_greedy(model: object, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """HF `generate`, greedy, one unpadded prompt: the exact reference for our tokens."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([input_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            min_new_tokens=max_new_tokens,
            pad_token_id=2,
        )
    return out[0, len(input_ids) :].tolist()


def hf_logprobs(model: object, token_ids: list[int]) -> object:
    """log-softmax of HF's logits at every position of `token_ids` ([len, vocab])."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)
