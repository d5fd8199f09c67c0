"""LoRA adapters through the Engine: a tiny random Llama with two PEFT adapters of different
ranks and target modules (built in-test, lora_B randomized), greedy tokens against HF + peft in
float32, mixed batches, radix-cache isolation between adapters, refusals, and adapters loaded
and unloaded at run time while requests run."""

from __future__ import annotations

from typing import Any, Callable

import pytest

pytest.importorskip("peft")
pytestmark = pytest.mark.slow  # one engine start plus HF + peft references: about a minute

from helpers.tiny_lora import NEW, PROMPTS, lora_references  # noqa: E402

GREEDY = {"max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def lora_setup(tiny_model: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The base model, the adapters' directories and HF (+ peft) greedy references per adapter."""
    base = tiny_model("llama")
    paths, refs = lora_references(base, tmp_path_factory.mktemp("lora"))
    return {"base": base, "paths": paths, "refs": refs}


@pytest.fixture(scope="module")
def engine(engine_factory: Any, lora_setup: dict[str, Any]) -> Any:
    paths = lora_setup["paths"]
    return engine_factory(
        lora_setup["base"],
        lora_paths=[f"A={paths['A']}", f"B={paths['B']}", f"D={paths['D']}"],
        max_lora_rank=8,
        max_loras_per_batch=2,
        dtype="float32",
        max_total_tokens=4096,
        num_threads=1,
        log_level="warning",
    )


def _gen(engine: Any, i: int, lora: Any) -> dict:
    return engine.generate(input_ids=PROMPTS[i], sampling_params=GREEDY, lora_path=lora)


def test_greedy_tokens_equal_hf_peft_per_adapter(engine: Any, lora_setup: dict[str, Any]) -> None:
    refs = lora_setup["refs"]
    assert all(refs[name, 0] != refs[None, 0] for name in "ABD")  # the adapters do change the output
    for name in ("A", "B", "D", None):
        for i in range(len(PROMPTS)):
            assert _gen(engine, i, name)["output_ids"] == refs[name, i], (name, i)


def test_one_batch_mixing_adapters_and_base(engine: Any, lora_setup: dict[str, Any]) -> None:
    """Four requests, A / base / B / A (more than max_loras_per_batch=2 adapters can't be in one
    batch, so the scheduler staggers them), each equal to its own reference."""
    refs = lora_setup["refs"]
    names, idx = ["A", None, "B", "A"], [0, 1, 0, 1]
    outs = engine.generate(input_ids=[PROMPTS[i] for i in idx], sampling_params=GREEDY, lora_path=names)
    assert [o["output_ids"] for o in outs] == [refs[n, i] for n, i in zip(names, idx)]


def test_prefix_cache_is_namespaced_by_adapter(engine: Any, lora_setup: dict[str, Any]) -> None:
    refs = lora_setup["refs"]
    assert engine.flush_cache()
    first = _gen(engine, 1, "A")
    assert first["meta_info"]["cached_tokens"] == 0
    for other in ("B", None):  # same prompt, other adapter / base: nothing reused, right tokens
        out = _gen(engine, 1, other)
        assert out["meta_info"]["cached_tokens"] == 0 and out["output_ids"] == refs[other, 1], other
    again = _gen(engine, 1, "A")  # same adapter: the prompt's KV is reused
    assert again["meta_info"]["cached_tokens"] == len(PROMPTS[1]) - 1
    assert again["output_ids"] == refs["A", 1]


def test_unknown_adapter_is_refused(engine: Any) -> None:
    with pytest.raises(ValueError, match="'nope' is not loaded"):
        _gen(engine, 0, "nope")
    with pytest.raises(ValueError, match="2 values of lora_path for 1 prompts"):
        engine.generate(input_ids=[PROMPTS[0]], sampling_params=GREEDY, lora_path=["A", "B"])
    assert _gen(engine, 0, "A")["output_ids"]  # still serving


def test_load_and_unload_while_requests_run(engine: Any, lora_setup: dict[str, Any]) -> None:
    refs, paths = lora_setup["refs"], lora_setup["paths"]
    long_run = engine.generate(
        input_ids=PROMPTS[0], sampling_params={**GREEDY, "max_new_tokens": 400}, lora_path="A", stream=True
    )
    streamed = list(next(long_run)["output_ids"])  # submitted and decoding under A
    assert set(engine.load_lora_adapter("C", paths["C"])) == {"A", "B", "C", "D"}
    assert _gen(engine, 0, "C")["output_ids"] == refs["C", 0]
    with pytest.raises(ValueError, match="'A' is in use by 1 request"):
        engine.unload_lora_adapter("A")
    with pytest.raises(ValueError, match="'C' is already loaded"):
        engine.load_lora_adapter("C", paths["C"])
    for chunk in long_run:
        streamed += chunk["output_ids"]
    # C took a slot mid-run (evicting an unused adapter: 2 slots): A's rows kept their adapter throughout.
    assert len(streamed) == 400 and streamed[:NEW] == refs["A", 0]
    assert set(engine.unload_lora_adapter("A")) == {"B", "C", "D"}
    with pytest.raises(ValueError, match="'A' is not loaded"):
        _gen(engine, 0, "A")
    engine.load_lora_adapter("A", paths["A"])  # a new uid: nothing cached under the old one is reused
    out = _gen(engine, 0, "A")
    assert out["output_ids"] == refs["A", 0] and out["meta_info"]["cached_tokens"] == 0
    engine.unload_lora_adapter("C")


def test_transformers_backend_applies_the_adapters(engine_factory: Any, lora_setup: dict[str, Any]) -> None:
    """The same adapters on the Transformers backend (its nn.Linear q/k/v/o/gate/up/down wrapped):
    each adapter alone and a batch mixing A, base and B equal HF + peft."""
    paths, refs = lora_setup["paths"], lora_setup["refs"]
    hf_engine = engine_factory(
        lora_setup["base"],
        lora_paths=[f"A={paths['A']}", f"B={paths['B']}"],
        model_impl="transformers",
        dtype="float32",
        max_total_tokens=2048,
        num_threads=1,
        log_level="warning",
    )
    for name in ("A", "B"):
        assert _gen(hf_engine, 0, name)["output_ids"] == refs[name, 0], name
    names, idx = ["A", None, "B"], [1, 0, 1]
    outs = hf_engine.generate(input_ids=[PROMPTS[i] for i in idx], sampling_params=GREEDY, lora_path=names)
    assert [o["output_ids"] for o in outs] == [refs[n, i] for n, i in zip(names, idx)]


def test_tensor_parallel_tp2(engine_factory: Any, lora_setup: dict[str, Any]) -> None:
    """tp 2 on CPU (gloo): the followers get each batch's adapter uids with the batch; column-
    parallel B and row-parallel A are sharded (the shrunk rows all-reduced). A mixed batch of
    A, base and B equals HF + peft; adapters are fixed at start-up under TP (a load is a 400-style
    ValueError naming the limitation)."""
    paths, refs = lora_setup["paths"], lora_setup["refs"]
    tp_engine = engine_factory(
        lora_setup["base"],
        lora_paths=[f"A={paths['A']}", f"B={paths['B']}"],
        tp=2,
        dtype="float32",
        max_total_tokens=2048,
        log_level="warning",
    )
    names, idx = ["A", None, "B", "B"], [0, 0, 1, 0]
    outs = tp_engine.generate(input_ids=[PROMPTS[i] for i in idx], sampling_params=GREEDY, lora_path=names)
    assert [o["output_ids"] for o in outs] == [refs[n, i] for n, i in zip(names, idx)]
    with pytest.raises(ValueError, match="not supported with tp_size > 1"):
        tp_engine.load_lora_adapter("C", paths["C"])
    assert _gen(tp_engine, 1, "A")["output_ids"] == refs["A", 1]


def test_constrained_rows_and_overlap_beside_adapters(engine: Any, lora_setup: dict[str, Any]) -> None:
    """Regex-constrained requests under A and B share batches with unconstrained A / base ones
    (a grammar step turns overlap off for that step): the free rows keep their reference tokens,
    the constrained ones match the regex and equal their solo runs; overlap did run."""
    import re

    refs = lora_setup["refs"]
    regex = r"(yes|no)-[0-9]{2,6}"
    constrained = {**GREEDY, "regex": regex, "max_new_tokens": 16}
    del constrained["ignore_eos"]
    before = engine.get_server_info()["num_overlapped_steps"]
    names, idx = ["A", "B", "A", None], [0, 1, 1, 0]
    params = [constrained, constrained, GREEDY, GREEDY]
    outs = engine.generate(input_ids=[PROMPTS[i] for i in idx], sampling_params=params, lora_path=names)
    assert [o["output_ids"] for o in outs[2:]] == [refs["A", 1], refs[None, 0]]
    for out, name, i in zip(outs[:2], names, idx):
        assert re.fullmatch(regex, out["text"]), out["text"]
        alone = engine.generate(input_ids=PROMPTS[i], sampling_params=constrained, lora_path=name)
        assert alone["output_ids"] == out["output_ids"]
    assert engine.get_server_info()["num_overlapped_steps"] > before


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_replay_each_batch_adapters(engine_factory: Any, lora_setup: dict[str, Any]) -> None:
    """On a GPU (Triton kernels): decode replayed from CUDA graphs (a variant with the LoRA
    launches for batches using adapters, one without for base-only batches) gives the same
    tokens as eager decode, for batch 1 on an adapter (the fused one-launch kernel), a batch
    mixing A, base and B, a batch of more than 8 rows (the shrink / expand pair) and a
    base-only batch; the adapters change the tokens, and batch 1 equals HF + peft."""
    paths, refs = lora_setup["paths"], lora_setup["refs"]
    batches = (
        (["A"], [0]),
        (["A", None, "B", "A", "B"], [0, 0, 1, 1, 0]),
        (["A", "B", None] * 4, [i % 2 for i in range(12)]),
        ([None, None], [0, 1]),
    )
    outs: dict[bool, list] = {}
    for graphs in (True, False):
        gpu_engine = engine_factory(
            lora_setup["base"],
            lora_paths=[f"A={paths['A']}", f"B={paths['B']}"],
            device="cuda",
            dtype="float32",
            max_total_tokens=4096,
            disable_cuda_graph=not graphs,
            log_level="warning",
        )
        outs[graphs] = []
        for names, idx in batches:
            got = gpu_engine.generate(input_ids=[PROMPTS[i] for i in idx], sampling_params=GREEDY, lora_path=names)
            outs[graphs].append([o["output_ids"] for o in got])
    assert outs[True] == outs[False]
    mixed = outs[True][1]
    assert mixed[1] not in (mixed[0], mixed[4])  # base vs A and B on prompt 0
    assert outs[True][0][0] == refs["A", 0]  # the fused kernel, replayed, equals HF + peft
    assert outs[True][3] == [refs[None, 0], refs[None, 1]]  # the graph without LoRA launches


def test_data_parallel_replicas_serve_the_adapters(engine_factory: Any, lora_setup: dict[str, Any]) -> None:
    """dp 2: requests spread over both replicas keep their adapters; an adapter loaded at run
    time reaches every replica; unloading is refused (replicas could disagree)."""
    paths, refs = lora_setup["paths"], lora_setup["refs"]
    dp_engine = engine_factory(
        lora_setup["base"],
        lora_paths=[f"A={paths['A']}"],
        max_lora_rank=8,
        dp=2,
        load_balance_method="round_robin",
        dtype="float32",
        max_total_tokens=2048,
        num_threads=1,
        log_level="warning",
    )
    names, idx = ["A", None, "A", None], [0, 1, 1, 0]
    outs = dp_engine.generate(input_ids=[PROMPTS[i] for i in idx], sampling_params=GREEDY, lora_path=names)
    assert [o["output_ids"] for o in outs] == [refs[n, i] for n, i in zip(names, idx)]
    assert set(dp_engine.load_lora_adapter("C", paths["C"])) == {"A", "C"}
    outs = dp_engine.generate(input_ids=[PROMPTS[0]] * 2, sampling_params=GREEDY, lora_path=["C", "C"])
    assert [o["output_ids"] for o in outs] == [refs["C", 0]] * 2  # round robin: one on each replica
    with pytest.raises(ValueError, match="not supported with dp_size > 1"):
        dp_engine.unload_lora_adapter("C")
