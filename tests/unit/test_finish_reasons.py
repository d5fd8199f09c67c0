"""Typed finish reasons: each gives the user-visible `meta_info["finish_reason"]` dict, survives
the scheduler's pipe (pickle), and the front's checks read them (400: rejected, >= 500: failed)."""

from __future__ import annotations

import pickle

import pytest

from radixlm.entrypoints.request_output import OutputAccumulator, RequestFailed
from radixlm.ipc.finish import FinishAbort, FinishLength, FinishStop
from radixlm.ipc.messages import ReqOutput


@pytest.mark.parametrize(
    "reason, expected",
    [
        (FinishLength(7), {"type": "length", "length": 7}),
        (FinishStop(42), {"type": "stop", "matched": 42}),
        (FinishStop("END"), {"type": "stop", "matched": "END"}),
        (FinishStop(None), {"type": "stop", "matched": None}),
        (FinishAbort("aborted"), {"type": "abort", "message": "aborted"}),
        (FinishAbort("bad", 400), {"type": "abort", "message": "bad", "status_code": 400}),
    ],
)
def test_json_form_and_pickling(reason: object, expected: dict) -> None:
    assert reason.to_json() == expected
    assert reason.kind == expected["type"]
    assert pickle.loads(pickle.dumps(reason)) == reason


def test_accumulator_keeps_the_reason_and_its_json() -> None:
    acc = OutputAccumulator("r")
    assert not acc.add(ReqOutput("r", [1], "a", None, {"finish_reason": None}))
    assert acc.add(ReqOutput("r", [2], "b", FinishStop("b"), {}))
    result = acc.result()
    assert result["meta_info"]["finish_reason"] == {"type": "stop", "matched": "b"}
    assert acc.finish == FinishStop("b") and result["text"] == "ab"


def test_accumulator_raises_for_rejected_and_failed_requests() -> None:
    rejected = OutputAccumulator("r")
    rejected.add(ReqOutput("r", [], "", FinishAbort("the prompt is empty", 400), {}))
    with pytest.raises(ValueError, match="the prompt is empty"):
        rejected.result()
    failed = OutputAccumulator("f")
    failed.add(ReqOutput("f", [], "", FinishAbort("scheduler died", 500), {}))
    with pytest.raises(RequestFailed, match="scheduler died"):
        failed.result()
    unavailable = OutputAccumulator("u")
    unavailable.add(ReqOutput("u", [], "", FinishAbort("KV pool exhausted", 503), {}))
    with pytest.raises(RequestFailed):
        unavailable.chunk(ReqOutput("u", [], "", None, {}))
    plain = OutputAccumulator("p")
    plain.add(ReqOutput("p", [], "", FinishAbort("aborted"), {}))
    assert plain.result()["meta_info"]["finish_reason"] == {"type": "abort", "message": "aborted"}
