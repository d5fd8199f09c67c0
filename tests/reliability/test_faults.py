"""Faults: clients vanishing at random points, /abort_request, a killed scheduler
(SIGTERM under load is in reliability/test_load.py; the long version of all:
`cd tests && python -m stress.faults`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Iterator

import httpx
import pytest
from helpers.server_utils import child_pids, launch_server, pid_alive, server_log, stop
from stress.common import wait_idle_and_check_leak
from stress.faults import POINTS, disconnect_storm, kill_scheduler


@pytest.fixture(scope="module")
def server(tiny_llama_dir: str) -> Iterator[tuple[str, Any]]:
    """Ended by the scheduler-kill test (the module's last); stopped here if that did not run."""
    base, proc = launch_server(tiny_llama_dir)
    yield base, proc
    if proc.poll() is None:
        stop(proc)


def test_random_disconnects_abort_and_free_the_pool(server: tuple[str, Any]) -> None:
    url = server[0]
    points = asyncio.run(disconnect_storm(url, count=48, concurrency=16, seed=3))
    assert set(points) == set(POINTS) and sum(points.values()) == 48
    info = wait_idle_and_check_leak(url, timeout=30.0)  # every abandoned request was aborted
    assert info["available_kv_tokens"] == info["max_total_num_tokens"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_abort_request_on_a_running_non_streaming_request(server: tuple[str, Any]) -> None:
    url, rid = server[0], f"abort-{uuid.uuid4().hex}"
    body = {"text": "abort me", "rid": rid, "sampling_params": {"max_new_tokens": 480, "ignore_eos": True}}

    async def go() -> dict:
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            task = asyncio.create_task(client.post("/generate", json=body))
            while (await client.get("/get_server_info")).json()["num_running_reqs"] == 0:
                await asyncio.sleep(0.01)
            assert (await client.post("/abort_request", json={"rid": rid})).status_code == 200
            return (await task).json()

    out = asyncio.run(go())
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and len(out["output_ids"]) < 480
    wait_idle_and_check_leak(url, timeout=30.0)


def test_killed_scheduler_fails_health_requests_and_exits_non_zero(server: tuple[str, Any]) -> None:
    url, proc = server
    children = child_pids(proc.pid)
    body = {"text": "x", "stream": True, "sampling_params": {"max_new_tokens": 480, "ignore_eos": True}}
    with httpx.Client(base_url=url, timeout=30.0) as client, client.stream("POST", "/generate", json=body) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
        codes, exit_s, code = kill_scheduler(url, proc)
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert code not in (0, None) and exit_s < 10, (code, exit_s)
    assert 200 not in codes[1:] and (503 in codes or 0 in codes), codes
    errors = [json.loads(e)["error"] for e in rest if e != "[DONE]" and "error" in json.loads(e)]
    assert errors and errors[0]["code"] == 503, rest[-3:]  # the running stream got an error, not a hang
    assert "engine died" in server_log(proc)
    time.sleep(1.0)  # the resource tracker exits just after the server
    assert not [c for c in children if pid_alive(c)]
