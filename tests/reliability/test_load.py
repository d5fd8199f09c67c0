"""Load: 200 concurrent requests mixing APIs, streaming, lengths, constraints and n>1,
then SIGTERM under load (the long versions: `cd tests && python -m stress.load --requests 1000`,
`python -m stress.faults`)."""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import pytest
from helpers.server_utils import child_pids, launch_server, pid_alive, server_log, stop
from stress.common import format_summary, summarize
from stress.faults import sigterm_under_load
from stress.load import make_load, make_templates, run_load


@pytest.fixture(scope="module")
def server(tiny_llama_dir: str) -> Iterator[tuple[str, Any]]:
    """Ended by the SIGTERM test (the module's last); stopped here if that did not run."""
    base, proc = launch_server(tiny_llama_dir)
    yield base, proc
    if proc.poll() is None:
        stop(proc)


@pytest.fixture(scope="module")
def url(server: tuple[str, Any]) -> str:
    return server[0]


def test_workload_mixes_every_kind() -> None:
    specs = make_load(make_templates(20, long_tokens=64), 200)
    assert {s.api for s in specs} == {"generate", "completions", "chat"}
    assert {s.stream for s in specs} == {True, False}
    assert {s.n for s in specs} == {1, 3}
    assert {s.constraint[0] for s in specs if s.constraint} == {"regex", "json_schema"}
    assert any(s.constraint is None for s in specs)
    assert min(s.max_tokens for s in specs) < 16 <= max(s.max_tokens for s in specs)
    lengths = [len(s.prompt.split()) for s in specs]
    assert min(lengths) < 10 and max(lengths) > 50


def test_200_mixed_requests_match_solo_runs_and_leak_nothing(url: str, capsys: Any) -> None:
    summary, problems = run_load(url, requests=200, concurrency=200, templates=20, long_tokens=64)
    with capsys.disabled():
        print("\n" + format_summary("load (CI)", summary))
    assert not problems, problems[:5]
    assert summary["sent"] == summary["completed"] == 200 and not summary["errors_by_code"]


def test_sigterm_during_load_finishes_or_fails_every_request(server: tuple[str, Any], capsys: Any) -> None:
    """Requests still running when the grace period nears its end are aborted, so each ends
    with a response or a final stream event; the server exits 0 and leaves no process behind."""
    url, proc = server
    children = child_pids(proc.pid)
    outcomes, wall, exit_s = sigterm_under_load(url, proc, requests=32, after_s=0.5)
    with capsys.disabled():
        print(
            "\n" + format_summary("SIGTERM during load (CI)", summarize(outcomes, wall)),
            f"\nexit {proc.returncode} after {exit_s:.1f} s",
        )
    assert len(outcomes) == 32  # none hung (run_all has a time limit)
    for o in outcomes:
        assert o.status == 200 or (o.error and not o.error.get("not_openai_style") and o.status != 500), o
    assert proc.returncode == 0, server_log(proc)[-2000:]
    assert exit_s < 15
    deadline = time.monotonic() + 5
    while any(pid_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert children and not [c for c in children if pid_alive(c)]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")
