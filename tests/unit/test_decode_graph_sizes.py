"""The decode CUDA graphs are planned for what is replayed (pure functions, no GPU): plain decode
up to the running requests; with NGRAM / STANDALONE up to a verify of every request's drafts as
decode rows; with EAGLE / EAGLE3 none at all (the drafter reads every forward's hidden states,
so every forward runs eagerly and graphs would only hold memory and start-up time)."""

from __future__ import annotations

import pytest

from radixlm.config.server_args import ServerArgs
from radixlm.executor.cuda_graph_runner import default_buckets
from radixlm.executor.model_runner import decode_graph_max_bs


def planned(max_running: int, cap: int = 256, **spec: object) -> int:
    args = ServerArgs(max_running_requests=max_running, cuda_graph_max_bs=cap, **spec)
    return decode_graph_max_bs(args.cuda_graph_max_bs, max_running, args.speculative_plan())


def test_plain_decode_captures_up_to_the_running_requests() -> None:
    assert planned(8) == 8
    assert planned(512) == 256  # capped by --cuda-graph-max-bs
    assert default_buckets(planned(8))[-1] == 8


@pytest.mark.parametrize("algorithm, path", [("NGRAM", None), ("STANDALONE", "/draft")])
def test_chain_verify_rows_fit_the_largest_graph(algorithm: str, path: str | None) -> None:
    spec = dict(speculative_algorithm=algorithm, speculative_draft_model_path=path, speculative_num_draft_tokens=8)
    assert planned(8, **spec) == 8 * 8  # every request's last token plus its 7 drafts, one row each
    assert planned(1, **spec) == 8
    assert planned(64, cap=256, **spec) == 256
    buckets = default_buckets(planned(8, **spec))
    assert buckets[0] == 1 and buckets[-1] == 64 and 8 in buckets  # plain decode steps still replay


@pytest.mark.parametrize("algorithm", ["EAGLE", "EAGLE3"])
def test_eagle_plans_no_graph(algorithm: str) -> None:
    spec = dict(speculative_algorithm=algorithm, speculative_draft_model_path="/head", speculative_num_steps=5)
    assert ServerArgs(**spec).speculative_plan().reads_hidden_states
    assert planned(8, **spec) == 0
    assert planned(256, **spec) == 0


def test_only_eagle_reads_hidden_states() -> None:
    ngram = ServerArgs(speculative_algorithm="NGRAM").speculative_plan()
    standalone = ServerArgs(speculative_algorithm="STANDALONE", speculative_draft_model_path="/d").speculative_plan()
    assert not ngram.reads_hidden_states and not standalone.reads_hidden_states
