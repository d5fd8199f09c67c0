"""A scheduler built in the test's own process (no Engine subprocess), driven step by step:
fast for comparing runs of the same model under different settings."""

from __future__ import annotations

from typing import Any

from radixlm.config.server_args import ServerArgs
from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.scheduler.loop import step_function
from radixlm.scheduler.process import build_scheduler


def make_scheduler(model_path: str, tokenizer: Any = None, **kwargs: Any) -> Any:
    """A scheduler over `model_path` (float32, small pool, one thread unless overridden)."""
    base = dict(model_path=model_path, dtype="float32", max_total_tokens=4096, num_threads=1, log_level="warning")
    args = ServerArgs(**{**base, **kwargs})
    eos = {tokenizer.eos_token_id} if tokenizer is not None else {1}
    return build_scheduler(args, tokenizer, eos)


def generate(sched: Any, prompts: list[list[int]], params: list[SamplingParams], **req_kwargs: Any) -> list[dict]:
    """Run every prompt to the end in one batch; per prompt {"ids", "meta", "finish"}. Afterwards
    the pool must hold no leaked slot (checked here)."""
    results: dict[str, dict] = {str(i): {"ids": [], "meta": {}, "finish": None} for i in range(len(prompts))}
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        sched.handle(TokenizedGenerateReq(rid=str(i), input_ids=list(prompt), params=p, **req_kwargs))
    step = step_function(sched)
    while sched.has_work():
        for out in step():
            res = results[out.rid]
            res["ids"] += out.new_ids
            res["meta"] = out.meta
            res["finish"] = out.finish_reason
    sched.check_leak()
    return [results[str(i)] for i in range(len(prompts))]
