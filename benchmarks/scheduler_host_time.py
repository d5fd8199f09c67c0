"""Host time the scheduler spends per decode step, without a GPU: the CPU work that overlap
scheduling must hide behind the device (and that bounds throughput when it cannot).

Builds the scheduler in this process on a tiny random Llama (2 layers, hidden 64: the model's own
step is small), admits N greedy requests, and reads the scheduler's phase timers over 40 decode
steps. Prints, per batch size, schedule + process ms per step (the host's own work) next to the
model step measured in the same run (launch: the CPU forward of the tiny model).

    python benchmarks/scheduler_host_time.py --batch 256 512 2048
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def measure(path: str, batch: int, steps: int) -> dict[str, float]:
    from transformers import AutoTokenizer

    from radixlm.config.server_args import ServerArgs
    from radixlm.ipc.messages import TokenizedGenerateReq
    from radixlm.sampling.sampling_params import SamplingParams
    from radixlm.scheduler.loop import step_function
    from radixlm.scheduler.process import build_scheduler, freeze_startup_objects

    args = ServerArgs(
        model_path=path,
        dtype="float32",
        max_total_tokens=batch * (32 + steps + 16),
        max_running_requests=batch,
        log_level="warning",
    )
    tok = AutoTokenizer.from_pretrained(path)
    sched = build_scheduler(args, tok, {tok.eos_token_id})
    step = step_function(sched)
    freeze_startup_objects()  # as the scheduler process does once it is built
    params = SamplingParams(temperature=0, max_new_tokens=steps + 10, ignore_eos=True)
    for i in range(batch):
        sched.handle(
            TokenizedGenerateReq(rid=str(i), input_ids=[5 + (i * 7 + j) % 300 for j in range(32)], params=params)
        )
    while sched.waiting:
        step()
    for _ in range(3):
        step()
    sched.timer.totals.clear()
    for _ in range(steps):
        step()
    dec = sched.timer.summary()["decode"]
    return {k: 1000 * dec[k] / dec["steps"] for k in ("schedule", "launch", "device_wait", "process")}


def main() -> None:
    from tiny_models import make_tiny_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 512, 2048])
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = make_tiny_model(tempfile.mkdtemp(), "llama")
    print("| batch | schedule ms | process ms | host ms/step | us per request | tiny-model step (launch) ms |")
    print("|---|---|---|---|---|---|")
    for batch in a.batch:
        ms = measure(path, batch, a.steps)
        host = ms["schedule"] + ms["process"]
        print(
            f"| {batch} | {ms['schedule']:.2f} | {ms['process']:.2f} | {host:.2f} | {1000 * host / batch:.1f} | "
            f"{ms['launch']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
