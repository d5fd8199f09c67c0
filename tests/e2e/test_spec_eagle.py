"""EAGLE speculative decoding on tiny random models, schedulers built in-process, with random
draft heads written in-test in the published EAGLE layout: the head's drafts equal a reference
computed with HF transformers modules; greedy outputs equal the plain scheduler's (page sizes 1
and 4, chunked prefill, prefix-cache hits, constrained and plain requests in the same batches);
a chi-square test that sampled outputs keep the target's distribution; acceptance metrics; a
head that does not fit the target is a start-up error. The pool leak check runs after every run
(`generate` calls `check_leak`, which also demands the drafter kept nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.chi_square import two_sample_p
from helpers.inproc_scheduler import generate, make_scheduler
from helpers.spec_setup import LENGTHS, PROMPTS, greedy, plain_outputs, spec_scheduler
from helpers.tiny_eagle import make_eagle_head, make_small_vocab_llama

from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.loop import step_function


@pytest.fixture(scope="module")
def head_dir(tiny_llama_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_eagle_head(tmp_path_factory.mktemp("eagle") / "head", tiny_llama_dir)


@pytest.fixture(scope="module")
def plain_runs(tiny_llama_dir: str) -> list[list[int]]:
    return plain_outputs(tiny_llama_dir)


def _record_drafts(sched: Any, tokens: list | None = None) -> list[list[list[int]]]:
    """Every `propose` answer of the scheduler's drafter, in order (and into `tokens`, each
    request's tokens when it was asked)."""
    seen: list[list[list[int]]] = []
    propose = sched.spec.drafter.propose

    def recording(reqs: list, limits: list) -> list[list[int]]:
        if tokens is not None:
            tokens.append([list(req.fill_ids) for req in reqs])
        out = propose(reqs, limits)
        seen.append(out)
        return out

    sched.spec.drafter.propose = recording
    return seen


# -- the head computes what EAGLE specifies ----------------------------------------------------------
def _reference_chain(target_dir: str, head: str, tokens: list[int], k: int) -> list[int]:
    """EAGLE's chain with HF modules, recomputed from scratch for every draft: head row p reads
    [embed(token p + 1), target's final-norm feature of position p]; its output is the next row's
    feature and, through the target's LM head, the draft."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    raw = json.loads((Path(head) / "config.json").read_text())
    raw.pop("architectures")
    config = LlamaConfig(**raw)
    config._attn_implementation = "sdpa"
    tensors = load_file(str(Path(head) / "model.safetensors"))
    layer = LlamaDecoderLayer(config, 0).eval()
    layer.input_layernorm = torch.nn.Identity()
    layer.load_state_dict({k[len("layers.0.") :]: v for k, v in tensors.items() if k.startswith("layers.0.")})
    fc = torch.nn.Linear(2 * config.hidden_size, config.hidden_size)
    fc.load_state_dict({"weight": tensors["fc.weight"], "bias": tensors["fc.bias"]})
    rotary = LlamaRotaryEmbedding(config)
    with torch.no_grad():
        feats = model.model(torch.tensor([tokens])).last_hidden_state[0, :-1]
        ids, drafts = list(tokens[1:]), []
        for _ in range(k):
            x = fc(torch.cat([model.model.embed_tokens(torch.tensor(ids)), feats], dim=-1))[None]
            pos = torch.arange(len(ids))[None]
            out = layer(x, position_ids=pos, position_embeddings=rotary(x, pos))[0, -1]
            drafts.append(int(model.lm_head(out).argmax()))
            ids.append(drafts[-1])
            feats = torch.cat([feats, out[None]])
    return drafts


@pytest.mark.parametrize("prompt", [PROMPTS[0], PROMPTS[3]])
def test_drafts_equal_an_hf_reference(tiny_llama_dir: str, head_dir: str, prompt: list[int]) -> None:
    """The first step's chain (after the prefill and one sampled token) and a later step's (after
    verify steps) both equal the chain HF modules compute from the same tokens."""
    sched = spec_scheduler("EAGLE", tiny_llama_dir, head_dir, speculative_num_steps=4)
    tokens: list = []
    seen = _record_drafts(sched, tokens)
    out = generate(sched, [prompt], [greedy(12)])[0]["ids"]
    assert tokens[0][0] == prompt + out[:1]
    assert seen[0][0] == _reference_chain(tiny_llama_dir, head_dir, tokens[0][0], 4)
    assert len(seen) > 2 and len(tokens[2][0]) > len(prompt) + 2
    assert seen[2][0] == _reference_chain(tiny_llama_dir, head_dir, tokens[2][0], 4)


# -- outputs are the target's ----------------------------------------------------------------------
@pytest.mark.parametrize("page_size, backend", [(1, "auto"), (4, "auto"), (1, "torch_native")])
def test_greedy_equals_plain(
    tiny_llama_dir: str, head_dir: str, plain_runs: list, page_size: int, backend: str
) -> None:
    kw = dict(page_size=page_size, attention_backend=backend)
    sched = spec_scheduler("EAGLE", tiny_llama_dir, head_dir, speculative_num_steps=3, **kw)
    seen = _record_drafts(sched)
    spec = generate(sched, PROMPTS, [greedy(n) for n in LENGTHS])
    assert [r["ids"] for r in spec] == plain_runs
    info = sched.info()
    assert info["spec_verify_steps"] > 0 and info["spec_draft_tokens"] == sum(len(d) for s in seen for d in s) > 0
    assert all(len(d) <= 3 for step in seen for d in step)
    steps = spec[2]["meta"]["spec_verify_ct"]
    assert spec[2]["meta"]["spec_accept_length"] == pytest.approx((LENGTHS[2] - 1) / steps)


@pytest.mark.parametrize("arch", ["llama_tied", "qwen3"])
def test_greedy_equals_plain_on_other_targets(tiny_model: Any, arch: str, tmp_path: Path) -> None:
    """A tied LM head (the head's logits through the target's embedding) and a Qwen3 target."""
    target = tiny_model(arch)
    params = [greedy(n) for n in LENGTHS]
    plain = [r["ids"] for r in generate(make_scheduler(target), PROMPTS, params)]
    sched = spec_scheduler("EAGLE", target, make_eagle_head(tmp_path / "head", target), speculative_num_steps=3)
    assert [r["ids"] for r in generate(sched, PROMPTS, params)] == plain
    assert sched.info()["spec_draft_tokens"] > 0


@pytest.mark.parametrize("arch", ["llama", "llama_tied"])
def test_drafts_from_a_bf16_target_on_the_cpu(tiny_model: Any, arch: str, tmp_path: Path) -> None:
    """A bf16 target on the CPU keeps its embedding, final hidden states and LM head in float32
    (`use_residual_dtype`); its bf16 head drafts from them and feeds the target's head its own.
    Outputs are not compared past the first token: verify and decode batches round differently
    in bf16, and the tiny random model's near-flat logits turn that into other greedy tokens."""
    target = tiny_model(arch)
    params = [greedy(n) for n in LENGTHS]
    plain = [r["ids"] for r in generate(make_scheduler(target, dtype="bfloat16"), PROMPTS, params)]
    sched = spec_scheduler("EAGLE", target, make_eagle_head(tmp_path / "head", target), dtype="bfloat16")
    spec = [r["ids"] for r in generate(sched, PROMPTS, params)]
    assert [len(s) for s in spec] == list(LENGTHS) and [s[0] for s in spec] == [p[0] for p in plain]
    info = sched.info()
    assert info["spec_verify_steps"] > 0 and info["spec_draft_tokens"] > 0


def test_chunked_prefill_and_prefix_hits(tiny_llama_dir: str, head_dir: str) -> None:
    """Prompts prefilled in 7-token chunks, then the same prompts again (radix-cache hits: the
    target computes no features for the cached prefix); outputs equal the plain ones."""
    prompts = [PROMPTS[0] * 2, PROMPTS[1] * 2]
    params = [greedy(15), greedy(20)]
    plain = [r["ids"] for r in generate(make_scheduler(tiny_llama_dir), prompts, params)]
    sched = spec_scheduler("EAGLE", tiny_llama_dir, head_dir, speculative_num_steps=2, chunked_prefill_size=7)
    assert [r["ids"] for r in generate(sched, prompts, params)] == plain
    again = generate(sched, prompts, params)
    assert [r["ids"] for r in again] == plain
    assert again[0]["meta"].get("cached_tokens", 1) > 0
    assert sched.info()["spec_draft_tokens"] > 0


def test_mixed_batch_of_speculating_and_plain_requests(tiny_llama_dir: str, tiny_tokenizer: Any, head_dir: str) -> None:
    """A constrained request (its drafts pruned by its grammar), a one-token request (never
    decodes) and a sampled one share verify batches with greedy speculating requests."""
    params = [
        greedy(20),
        SamplingParams(temperature=0, max_new_tokens=20, regex="(ab|cd){3,8}"),
        greedy(1),
        SamplingParams(temperature=0.8, max_new_tokens=16, ignore_eos=True, seed=7),
        greedy(25),
    ]
    prompts = PROMPTS + [PROMPTS[0]]
    plain = generate(make_scheduler(tiny_llama_dir, tokenizer=tiny_tokenizer), prompts, params)
    sched = spec_scheduler("EAGLE", tiny_llama_dir, head_dir, tokenizer=tiny_tokenizer, speculative_num_steps=3)
    seen = _record_drafts(sched)
    spec = generate(sched, prompts, params)
    for i in (0, 1, 2, 4):
        assert spec[i]["ids"] == plain[i]["ids"], i
    assert len(spec[3]["ids"]) == 16
    assert max(sum(1 for d in step if d) for step in seen) >= 3


def test_abort_mid_decode_keeps_no_state(tiny_llama_dir: str, head_dir: str) -> None:
    sched = spec_scheduler("EAGLE", tiny_llama_dir, head_dir, speculative_num_steps=2)
    for i, prompt in enumerate(PROMPTS[:2]):
        sched.handle(TokenizedGenerateReq(rid=str(i), input_ids=prompt, params=greedy(40)))
    step = step_function(sched)
    for _ in range(4):
        step()
    assert sched.spec.drafter.features, "no drafter state after decoding started"
    sched.abort("0")
    while sched.has_work():
        step()
    sched.check_leak()
    assert not sched.spec.drafter.features


def test_head_with_own_embeddings_and_first_norm(tiny_llama_dir: str, plain_runs: list, tmp_path: Path) -> None:
    """A head shipping `embed_tokens` / `lm_head` and a first-layer `input_layernorm` loads and
    drafts with them; outputs are still the target's."""
    head = make_eagle_head(tmp_path / "head", tiny_llama_dir, seed=1, first_norm=True, own_embed=True)
    sched = spec_scheduler("EAGLE", tiny_llama_dir, head, speculative_num_steps=2)
    assert sched.spec.drafter.head.embed is not None and sched.spec.drafter.head.head_weight is not None
    assert not isinstance(sched.spec.drafter.head.layers[0].input_layernorm, torch.nn.Identity)
    spec = generate(sched, PROMPTS, [greedy(n) for n in LENGTHS])
    assert [r["ids"] for r in spec] == plain_runs


# -- sampling keeps the target's distribution -------------------------------------------------------
@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_small_vocab_llama(tmp_path_factory.mktemp("vocab12") / "model")


def test_sampled_distribution_matches_plain(small_vocab_model: str, tmp_path: Path) -> None:
    """Chi-square (two samples) on the tokens at output positions 1, 2 and 3 and on the pairs at
    1 and 2: with an EAGLE head drafting, temperature 1 sampling has the plain distribution."""
    n = 1500
    prompts = [[3, 5, 7, 4, 6]] * n
    params = [SamplingParams(max_new_tokens=4, ignore_eos=True, temperature=1.0)] * n
    plain = generate(make_scheduler(small_vocab_model), prompts, params)
    head = make_eagle_head(tmp_path / "head", small_vocab_model, seed=2)
    sched = spec_scheduler("EAGLE", small_vocab_model, head, speculative_num_steps=2)
    spec = generate(sched, prompts, params)
    info = sched.info()
    assert info["spec_accepted_tokens"] > 0 and info["avg_spec_accept_length"] > 1.0, info
    a = torch.tensor([r["ids"] for r in plain])
    b = torch.tensor([r["ids"] for r in spec])
    for col in (1, 2, 3):
        assert two_sample_p(a[:, col], b[:, col], 12) > 1e-3
    assert two_sample_p(a[:, 1] * 12 + a[:, 2], b[:, 1] * 12 + b[:, 2], 144) > 1e-3


# -- start-up errors ---------------------------------------------------------------------------------
def test_head_of_another_width_is_refused(tiny_llama_dir: str, tmp_path: Path) -> None:
    head = make_eagle_head(tmp_path / "narrow", tiny_llama_dir, hidden_size=32)
    with pytest.raises(ValueError, match="hidden_size 32 does not match the target model's 64"):
        spec_scheduler("EAGLE", tiny_llama_dir, head)


def test_head_tensor_of_wrong_shape_is_refused(tiny_llama_dir: str, tmp_path: Path) -> None:
    from helpers.tiny_eagle import eagle_head_config, head_tensors

    tensors = head_tensors(eagle_head_config(tiny_llama_dir), seed=0)
    tensors["fc.weight"] = torch.zeros(64, 64)  # fc over the feature alone, not [embed, feature]
    head = make_eagle_head(tmp_path / "bad", tiny_llama_dir, tensors=tensors)
    with pytest.raises(ValueError, match="'fc.weight'"):
        spec_scheduler("EAGLE", tiny_llama_dir, head)


def test_head_with_unknown_tensors_is_refused(tiny_llama_dir: str, tmp_path: Path) -> None:
    from helpers.tiny_eagle import eagle_head_config, head_tensors

    tensors = head_tensors(eagle_head_config(tiny_llama_dir), seed=0)
    tensors["midlayer.self_attn.q_proj.weight"] = torch.zeros(64, 128)  # an EAGLE-3 head's
    head = make_eagle_head(tmp_path / "eagle3", tiny_llama_dir, tensors=tensors)
    with pytest.raises(ValueError, match="midlayer"):
        spec_scheduler("EAGLE", tiny_llama_dir, head)


def test_retraction_under_a_small_pool(tiny_llama_dir: str, head_dir: str) -> None:
    """A 96-slot pool cannot hold four 18-token prompts decoding 30 tokens each: requests are
    retracted and re-prefilled (from the radix tree) mid-run; outputs still equal the plain ones."""
    prompts, params = PROMPTS, [greedy(30)] * 4
    plain = [r["ids"] for r in generate(make_scheduler(tiny_llama_dir, max_total_tokens=96), prompts, params)]
    sched = spec_scheduler("EAGLE", tiny_llama_dir, head_dir, speculative_num_steps=3, max_total_tokens=96)
    assert [r["ids"] for r in generate(sched, prompts, params)] == plain
    assert sched.info()["num_retracted_reqs"] > 0


def test_engine_reports_acceptance(engine_factory: Any, tiny_llama_dir: str, head_dir: str) -> None:
    """Through the Engine (scheduler process): the head loads there, outputs equal the plain
    engine's, and meta info and get_server_info count the same verify steps."""
    params = {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True}
    plain = make_scheduler(tiny_llama_dir)
    want = generate(plain, [PROMPTS[1]], [greedy(20)])[0]["ids"]
    engine = engine_factory(
        tiny_llama_dir,
        dtype="float32",  # as make_scheduler's: "auto" is bfloat16 on a CPU with AVX512-BF16
        speculative_algorithm="EAGLE",
        speculative_draft_model_path=head_dir,
        speculative_num_steps=2,
    )
    out = engine.generate(input_ids=PROMPTS[1], sampling_params=params)
    assert out["output_ids"] == want
    meta, info = out["meta_info"], engine.get_server_info()
    assert info["spec_verify_steps"] == meta["spec_verify_ct"] > 0
    steps = meta["spec_verify_ct"]
    assert info["spec_emitted_tokens"] == 19 and steps < info["spec_draft_tokens"] <= 2 * steps  # fewer near the end
    assert info["avg_spec_accept_length"] == pytest.approx(meta["spec_accept_length"])
    engine.check_no_leak()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphs_on_cuda_are_planned_for_what_is_replayed(tiny_llama_dir: str, head_dir: str) -> None:
    """An EAGLE target captures no CUDA graph (every forward feeds the head) and still equals
    plain decoding, which replays its graphs; NGRAM's graphs reach a verify of every request's
    drafts as decode rows."""
    cuda = dict(device="cuda", max_running_requests=4)
    plain = make_scheduler(tiny_llama_dir, **cuda)
    assert plain.runner.graphs is not None and plain.runner.graphs.max_bs == 4
    want = [r["ids"] for r in generate(plain, PROMPTS, [greedy(n) for n in LENGTHS])]
    eagle = spec_scheduler("EAGLE", tiny_llama_dir, head_dir, speculative_num_steps=3, **cuda)
    assert eagle.runner.graphs is None and eagle.spec.decode_rows == 0
    assert [r["ids"] for r in generate(eagle, PROMPTS, [greedy(n) for n in LENGTHS])] == want
    ngram = make_scheduler(tiny_llama_dir, speculative_algorithm="NGRAM", speculative_num_draft_tokens=4, **cuda)
    assert ngram.runner.graphs.max_bs == ngram.spec.decode_rows == 4 * 4
