"""EAGLE-3 speculative decoding on the tiny random Llama with random heads written in-test in the
published EAGLE-3 layout (draft vocabulary of every other target id): drafts equal a reference
computed with HF transformers modules (intermediate target layers captured by hooks); greedy
outputs equal the plain scheduler's; sampled outputs keep the target's distribution
(chi-square); heads that cannot read the target are start-up errors. The pool leak check runs
after every run (`generate`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.chi_square import two_sample_p
from helpers.inproc_scheduler import generate, make_scheduler
from helpers.spec_setup import LENGTHS, PROMPTS, greedy, plain_outputs, spec_scheduler
from helpers.tiny_eagle import make_eagle3_head, make_small_vocab_llama

from radixlm.sampling.sampling_params import SamplingParams

LAYERS = [0, 1, 1]  # the tiny target has two layers: the outputs of layer 0 and (twice) layer 1


@pytest.fixture(scope="module")
def head3(tiny_llama_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_eagle3_head(tmp_path_factory.mktemp("eagle3") / "head", tiny_llama_dir, LAYERS)


def _reference_chain(target_dir: str, head: str, tokens: list[int], k: int) -> list[int]:
    """EAGLE-3's chain with HF modules, recomputed from scratch for every draft: row p reads
    embed(token p + 1) and fc(outputs of the captured target layers at p), or for a drafted row
    the previous row's midlayer output; drafts map the draft vocabulary through d2t."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaMLP,
        LlamaRMSNorm,
        LlamaRotaryEmbedding,
    )

    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    raw = json.loads((Path(head) / "config.json").read_text())
    raw.pop("architectures")
    config = LlamaConfig(**raw)
    config._attn_implementation = "sdpa"
    t = load_file(str(Path(head) / "model.safetensors"))
    h = config.hidden_size
    attn = LlamaAttention(config, 0).eval()
    for name in ("q_proj", "k_proj", "v_proj"):
        weight = t[f"midlayer.self_attn.{name}.weight"]
        setattr(attn, name, torch.nn.Linear(2 * h, weight.shape[0], bias=False))
        getattr(attn, name).weight.data.copy_(weight)
    attn.o_proj.weight.data.copy_(t["midlayer.self_attn.o_proj.weight"])
    mlp = LlamaMLP(config)
    mlp.load_state_dict({k.split("mlp.")[1]: v for k, v in t.items() if ".mlp." in k})
    norms = {}
    for name in ("input_layernorm", "hidden_norm", "post_attention_layernorm", "final"):
        norms[name] = LlamaRMSNorm(h, config.rms_norm_eps)
        key = "norm.weight" if name == "final" else f"midlayer.{name}.weight"
        norms[name].weight.data.copy_(t[key])
    rotary = LlamaRotaryEmbedding(config)
    outs: dict[int, torch.Tensor] = {}
    for i in set(LAYERS):
        model.model.layers[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o[0]))
    with torch.no_grad():
        model.model(torch.tensor([tokens]))
        hidden = (torch.cat([outs[i] for i in LAYERS], dim=-1)[:-1]) @ t["fc.weight"].T
        ids, drafts = list(tokens[1:]), []
        for _ in range(k):
            embeds = model.model.embed_tokens(torch.tensor(ids))
            x = torch.cat([norms["input_layernorm"](embeds), norms["hidden_norm"](hidden)], dim=-1)[None]
            pos = torch.arange(len(ids))[None]
            mid = hidden + attn(x, position_embeddings=rotary(x, pos))[0][0]
            out = (mid + mlp(norms["post_attention_layernorm"](mid)))[-1]
            d = int((norms["final"](out) @ t["lm_head.weight"].T).argmax())
            drafts.append(d + int(t["d2t"][d]))
            ids.append(drafts[-1])
            hidden = torch.cat([hidden, out[None]])
    return drafts


def test_drafts_equal_an_hf_reference(tiny_llama_dir: str, head3: str) -> None:
    sched = spec_scheduler("EAGLE3", tiny_llama_dir, head3, speculative_num_steps=4)
    tokens: list = []
    propose = sched.spec.drafter.propose
    seen: list = []

    def recording(reqs: list, limits: list) -> list:
        tokens.append([list(r.fill_ids) for r in reqs])
        seen.append(propose(reqs, limits))
        return seen[-1]

    sched.spec.drafter.propose = recording
    generate(sched, [PROMPTS[0]], [greedy(12)])
    assert all(d % 2 == 0 for step in seen for chain in step for d in chain)  # the draft vocabulary's ids
    for i in (0, 2):
        assert seen[i][0] == _reference_chain(tiny_llama_dir, head3, tokens[i][0], 4)


@pytest.mark.parametrize("page_size", [1, 4])
def test_greedy_equals_plain(tiny_llama_dir: str, head3: str, page_size: int) -> None:
    params = [greedy(n) for n in LENGTHS]
    plain = plain_outputs(tiny_llama_dir)
    sched = spec_scheduler(
        "EAGLE3", tiny_llama_dir, head3, speculative_num_steps=3, page_size=page_size, chunked_prefill_size=8
    )
    spec = generate(sched, PROMPTS, params)
    assert [r["ids"] for r in spec] == plain
    info = sched.info()
    assert info["spec_verify_steps"] > 0 and info["spec_draft_tokens"] > 0
    assert spec[0]["meta"]["spec_verify_ct"] > 0


def test_drafts_from_a_bf16_target_on_the_cpu(tiny_llama_dir: str, head3: str) -> None:
    """The bf16 head reads a bf16 target whose embedding and residual stream are float32 on the
    CPU (outputs compared at the first token only: see test_spec_eagle's bf16 test)."""
    params = [greedy(n) for n in LENGTHS]
    plain = [r["ids"] for r in generate(make_scheduler(tiny_llama_dir, dtype="bfloat16"), PROMPTS, params)]
    sched = spec_scheduler("EAGLE3", tiny_llama_dir, head3, speculative_num_steps=3, dtype="bfloat16")
    spec = [r["ids"] for r in generate(sched, PROMPTS, params)]
    assert [len(s) for s in spec] == list(LENGTHS) and [s[0] for s in spec] == [p[0] for p in plain]
    info = sched.info()
    assert info["spec_verify_steps"] > 0 and info["spec_draft_tokens"] > 0


def test_sampled_distribution_matches_plain(tmp_path: Path) -> None:
    """Chi-square (two samples) at output positions 1, 2 and 3 and on the pairs at 1 and 2: with
    an EAGLE-3 head (draft vocabulary: the even ids) drafting, temperature 1 sampling keeps the
    plain distribution."""
    target = make_small_vocab_llama(tmp_path / "vocab12")
    n = 1500
    prompts = [[3, 5, 7, 4, 6]] * n
    params = [SamplingParams(max_new_tokens=4, ignore_eos=True, temperature=1.0)] * n
    plain = generate(make_scheduler(target), prompts, params)
    sched = spec_scheduler(
        "EAGLE3", target, make_eagle3_head(tmp_path / "head", target, LAYERS, seed=2), speculative_num_steps=2
    )
    spec = generate(sched, prompts, params)
    assert sched.info()["spec_accepted_tokens"] > 0
    a = torch.tensor([r["ids"] for r in plain])
    b = torch.tensor([r["ids"] for r in spec])
    for col in (1, 2, 3):
        assert two_sample_p(a[:, col], b[:, col], 12) > 1e-3
    assert two_sample_p(a[:, 1] * 12 + a[:, 2], b[:, 1] * 12 + b[:, 2], 144) > 1e-3


def test_default_layers_need_a_deeper_target(tiny_llama_dir: str, tmp_path: Path) -> None:
    """Without eagle_aux_hidden_state_layer_ids the head reads layers 1, N/2 - 1 and N - 4: a
    two-layer target has no such layers."""
    head = make_eagle3_head(tmp_path / "head", tiny_llama_dir, LAYERS)
    config = json.loads((Path(head) / "config.json").read_text())
    del config["eagle_config"]
    (Path(head) / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="eagle_aux_hidden_state_layer_ids"):
        spec_scheduler("EAGLE3", tiny_llama_dir, head)


def test_small_draft_vocabulary_without_d2t_is_refused(tiny_llama_dir: str, tmp_path: Path) -> None:
    from helpers.tiny_eagle import eagle3_tensors, eagle_head_config

    config = eagle_head_config(tiny_llama_dir)
    tensors = eagle3_tensors(config, 0, list(range(0, config.vocab_size, 2)))
    del tensors["d2t"]
    head = make_eagle3_head(tmp_path / "head", tiny_llama_dir, LAYERS, tensors=tensors)
    with pytest.raises(ValueError, match="needs d2t"):
        spec_scheduler("EAGLE3", tiny_llama_dir, head)
