"""Shared pieces of the frontend-language tests: SGLang's README programs, a character-level
tiny model, and small helpers to read server metrics."""

from __future__ import annotations

import string
from pathlib import Path

import httpx

import radixlm as sgl

# -- SGLang's README examples (max_tokens cut down: the tiny test models write noise) -----------
IP_REGEX = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"
CHARACTER_REGEX = (
    r"""\{\n"""
    + r"""    "name": "[\w\d\s]{1,16}",\n"""
    + r"""    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n"""
    + r"""    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n"""
    + r"""    "occupation": "(student|teacher|auror|ministry of magic|death eater|order of the phoenix)",\n"""
    + r"""    "wand": \{\n"""
    + r"""        "wood": "[\w\d\s]{1,16}",\n"""
    + r"""        "core": "[\w\d\s]{1,16}",\n"""
    + r"""        "length": [0-9]{1,2}\.[0-9]{0,2}\n"""
    + r"""    \},\n"""
    + r"""    "alive": "(Alive|Deceased)",\n"""
    + r"""    "patronus": "[\w\d\s]{1,16}",\n"""
    + r"""    "bogart": "[\w\d\s]{1,16}"\n"""
    + r"""\}"""
)
SYSTEM_PROMPT = (
    "You are a helpful assistant who answers questions about world geography in one short "
    "sentence, names the capital city first, and never adds anything else to the answer."
)


@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=12))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=12))


@sgl.function
def tool_use(s, question):
    s += "To answer this question: " + question + ". "
    s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "
    if s["tool"] == "calculator":
        s += "The math expression is" + sgl.gen("expression", max_tokens=8)
    elif s["tool"] == "search engine":
        s += "The key word to search is" + sgl.gen("word", max_tokens=8)


@sgl.function
def tip_suggestion(s):
    s += "Here are two tips for staying healthy: 1. Balanced Diet. 2. Regular Exercise.\n\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"Now, expand tip {i + 1} into a paragraph:\n"
        f += sgl.gen("detailed_tip", max_tokens=8, stop="\n\n")
    s += "Tip 1:" + forks[0]["detailed_tip"] + "\n"
    s += "Tip 2:" + forks[1]["detailed_tip"] + "\n"
    s += "In summary" + sgl.gen("summary", max_tokens=8)
    s.set_var("fork_meta", [f.get_meta_info("detailed_tip") for f in forks])


@sgl.function
def image_qa(s, image_file, question):
    s += sgl.user(sgl.image(image_file) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8))


@sgl.function
def regular_expression_gen(s):
    s += "Q: What is the IP address of the Google DNS servers?\n"
    s += "A: " + sgl.gen("answer", temperature=0, regex=IP_REGEX)


@sgl.function
def character_gen(s, name):
    s += name + " is a character in Harry Potter. Please fill in the following information about this character.\n"
    s += sgl.gen("json_output", max_tokens=400, regex=CHARACTER_REGEX)


@sgl.function
def text_qa(s, question):
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n", max_tokens=8)


@sgl.function
def geography_qa(s, question):
    s += sgl.system(SYSTEM_PROMPT)
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=4))


# -- models and servers ----------------------------------------------------------------------------
CHAR_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"


def make_char_model(tmp_dir: str | Path, seed: int = 0) -> str:
    """A tiny random Llama over a character-level tokenizer (printable ASCII, no merges), so
    any generated text tokenizes back to exactly the generated tokens: a prompt extended with
    the model's own greedy output continues as the longer generation did."""
    import torch
    from tokenizers import Tokenizer, decoders, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from helpers.tiny_models import TINY_CHAT_TEMPLATE, tiny_config

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(CHAR_ALPHABET)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    out = Path(tmp_dir) / "tiny_char_llama"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(vocab)), dtype=torch.float32)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)


def metric(base_url: str, name: str) -> float:
    """The value of one unlabelled Prometheus sample of the server (0 when absent)."""
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    return 0.0
