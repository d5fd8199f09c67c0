"""RequestPlan: prompts come out in call order as each one's preparation finishes, the first
failing prompt's error ends the iteration and cancels preparations not yet started."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from radixlm.entrypoints.request_plan import PendingPrompt, RequestPlan
from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.sampling.sampling_params import SamplingParams


def _req(rid: str, ids: list[int]) -> TokenizedGenerateReq:
    return TokenizedGenerateReq(rid=rid, input_ids=ids, params=SamplingParams())


def _build(rid: str):  # noqa: ANN202 - a PendingPrompt.build
    def build(prepared: object) -> list[TokenizedGenerateReq]:
        if isinstance(prepared, str):
            raise ValueError(prepared)
        return [_req(rid, [1] if prepared is None else list(prepared))]

    return build


def _done(value: object) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def test_prompts_come_in_call_order_with_their_prepared_values() -> None:
    plan = RequestPlan(
        [
            PendingPrompt(_done([7, 8]), _build("a")),
            PendingPrompt(None, _build("b")),
            PendingPrompt(_done([9]), _build("c")),
        ],
        ["a", "b", "c"],
        batched=True,
    )
    assert [(r.rid, r.input_ids) for r in plan.all()] == [("a", [7, 8]), ("b", [1]), ("c", [9])]


def test_an_early_prompt_is_yielded_before_a_later_preparation_finishes() -> None:
    later: Future = Future()
    plan = RequestPlan([PendingPrompt(_done([5]), _build("a")), PendingPrompt(later, _build("b"))], ["a", "b"], True)
    it = iter(plan)
    assert [r.rid for r in next(it)] == ["a"]
    assert not later.done()  # the first prompt did not wait for the second's preparation
    threading.Timer(0.05, later.set_result, args=([6],)).start()
    assert [(r.rid, r.input_ids) for r in next(it)] == [("b", [6])]


def test_the_first_failure_ends_the_plan_and_cancels_pending_preparations() -> None:
    failed: Future = Future()
    failed.set_exception(ValueError("image 0 is not an image"))
    pending: Future = Future()
    plan = RequestPlan(
        [
            PendingPrompt(_done([1]), _build("a")),
            PendingPrompt(failed, _build("b")),
            PendingPrompt(pending, _build("c")),
        ],
        ["a", "b", "c"],
        True,
    )
    seen = []
    with pytest.raises(ValueError, match="image 0 is not an image"):
        for reqs in plan:
            seen += [r.rid for r in reqs]
    assert seen == ["a"]
    assert pending.cancelled()


def test_a_build_error_after_preparation_propagates() -> None:
    plan = RequestPlan([PendingPrompt(_done("prompt too long"), _build("a"))], ["a"], False)
    with pytest.raises(ValueError, match="prompt too long"):
        plan.all()


def test_async_iteration_awaits_preparations_in_order() -> None:
    slow: Future = Future()
    plan = RequestPlan([PendingPrompt(slow, _build("a")), PendingPrompt(_done([3]), _build("b"))], ["a", "b"], True)

    async def run() -> list[tuple[str, list[int]]]:
        asyncio.get_running_loop().call_later(0.05, slow.set_result, [2])
        return [(r.rid, r.input_ids) for r in await plan.aall()]

    assert asyncio.run(run()) == [("a", [2]), ("b", [3])]


def test_ready_plan_holds_the_given_requests() -> None:
    reqs = [_req("x", [1]), _req("y", [2])]
    plan = RequestPlan.ready(reqs, batched=False)
    assert plan.rids == ["x", "y"] and not plan.batched
    assert plan.all() == reqs
