"""SGLang's spellings: --nccl-init, --impl / impl=, --disable-flashinfer, bench_latency's --batch,
and the sglang:* metric names under --enable-metrics."""

from __future__ import annotations

import pytest

from radixlm.config.cli_args import parse_args
from radixlm.config.server_args import ServerArgs
from radixlm.entrypoints.http.metrics import Metrics


def test_nccl_init_is_a_deprecated_alias_of_dist_init_addr(capsys: pytest.CaptureFixture) -> None:
    args = parse_args(["--tp", "4", "--nccl-init", "sgl-dev-0:50000", "--nnodes", "2", "--node-rank", "1"])
    assert (args.dist_init_addr, args.tp_size, args.nnodes, args.node_rank) == ("sgl-dev-0:50000", 4, 2, 1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--nccl-init is deprecated, use --dist-init-addr" in err
    assert parse_args(["--dist-init-addr", "h:1"]).dist_init_addr == "h:1"
    assert capsys.readouterr().err == ""
    assert parse_args([]).dist_init_addr is None


def test_impl_is_model_impl_on_the_command_line_and_in_keywords() -> None:
    assert parse_args(["--impl", "transformers"]).model_impl == "transformers"
    assert ServerArgs.from_kwargs(impl="transformers").model_impl == "transformers"
    assert ServerArgs.from_kwargs(nccl_init="h:2").dist_init_addr == "h:2"
    with pytest.raises(SystemExit):
        parse_args(["--impl", "vllm"])  # still validated: a choice we do not have


def test_disable_flashinfer_is_accepted_with_one_notice(capsys: pytest.CaptureFixture) -> None:
    assert parse_args(["--disable-flashinfer"]) == parse_args([])
    err = capsys.readouterr().err
    assert err.count("--disable-flashinfer accepted and ignored") == 1 and err.count("\n") == 1


def test_unknown_flags_still_fail(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--disable-flashinfer-sampling"])
    assert "unrecognized arguments: --disable-flashinfer-sampling" in capsys.readouterr().err


def test_bench_latency_takes_sglangs_batch_flag() -> None:
    from radixlm.bench.one_batch import parse_args as bench_args

    args = bench_args(["--batch", "32", "--input-len", "256", "--output-len", "32"])
    assert (args.batch_size, args.input_len, args.output_len) == ([32], [256], [32])


def _info() -> dict:
    return dict(num_running_reqs=2, num_waiting_reqs=1, max_total_num_tokens=100, available_kv_tokens=25)


def test_metrics_mirror_sglang_names_only_when_enabled() -> None:
    meta = {"prompt_tokens": 10, "cached_tokens": 4, "completion_tokens": 3, "finish_reason": {"type": "length"}}
    plain, mirrored = Metrics(_info), Metrics(_info, "org/model")
    for m in (plain, mirrored):
        m.on_finish(meta)
        m.ttft.observe(0.2)
    assert "sglang:" not in plain.render().decode()
    text = mirrored.render().decode()
    label = '{model_name="org/model"}'
    for line in (
        f"sglang:cached_tokens_total{label} 4.0",
        f"sglang:prompt_tokens_total{label} 10.0",
        f"sglang:generation_tokens_total{label} 3.0",
        f"sglang:num_running_reqs{label} 2.0",
        f"sglang:token_usage{label} 0.75",
        f"sglang:cache_hit_rate{label} 0.4",
        f"sglang:time_to_first_token_seconds_count{label} 1.0",
        "radixlm_cached_tokens_total 4.0",
    ):
        assert line in text, line
    assert 'sglang:num_finished_requests_total{model_name="org/model",reason="length"} 1.0' in text
