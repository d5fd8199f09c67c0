"""A follower rank's process: join the group, build this rank's shard, run every batch rank 0 sends."""

from __future__ import annotations

import logging
from typing import Any

from radixlm.config.server_args import ServerArgs
from radixlm.distributed.batch_sync import BatchReceiver
from radixlm.distributed.setup import DistInit, check_p2p, init_tp_group, rank_device, ranks_per_node


def run_follower_process(args: ServerArgs, init: DistInit, model_config: Any) -> None:
    """Runs until rank 0 sends stop (exit code 0). Any error, a lost peer included (a collective
    fails after `dist_timeout`, or at once on gloo), raises and exits non-zero."""
    from radixlm.executor.cpu_process import keep_triton_out
    from radixlm.executor.model_runner import ModelRunner

    logging.basicConfig(level=args.log_level.upper(), format=f"[radixlm tp{init.rank}] %(message)s")
    keep_triton_out(args.device)
    device = rank_device(args, init.local_rank)
    tp = init_tp_group(init, device)
    try:
        if args.enable_p2p_check and device is not None:
            check_p2p(init.local_rank, ranks_per_node(args), device)
        runner = ModelRunner(args, model_config, tp, device)
        receiver = BatchReceiver(tp, runner.device, runner.req_to_token_pool.table)
        while (batch := receiver.recv()) is not None:
            runner.forward(batch)
    finally:
        tp.destroy()
