"""Starting follower ranks: beside the scheduler (node 0), or alone on the other nodes.

    python -m radixlm.distributed.launch --model-path M --tp 4 --nnodes 2 --node-rank 1 \\
        --dist-init-addr node0:5000

runs node 1's ranks of a two-node group whose node 0 runs the server with the same flags
(and --node-rank 0). It exits when any of its ranks exits.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
from multiprocessing.connection import wait as wait_for_any
from multiprocessing.process import BaseProcess
from typing import Any

from radixlm.config.server_args import ServerArgs
from radixlm.distributed.follower import run_follower_process
from radixlm.distributed.setup import DistInit, plan_local_ranks

logger = logging.getLogger(__name__)


def start_followers(ctx: Any, args: ServerArgs, model_config: Any, inits: list[DistInit]) -> list[BaseProcess]:
    """One daemon process per follower rank in `inits` (none of them rank 0)."""
    procs = []
    for init in inits:
        proc = ctx.Process(
            target=run_follower_process,
            args=(args, init, model_config),
            daemon=True,
            name=f"radixlm-tp-rank{init.rank}",
        )
        proc.start()
        procs.append(proc)
    return procs


def run_worker_node(args: ServerArgs) -> int:
    """Run this node's ranks (node_rank > 0) until one exits; stop the others; return its exit code."""
    if args.node_rank == 0:
        raise ValueError("node 0 runs the server (python -m radixlm.launch_server); this is for node_rank > 0")
    procs = start_followers(mp.get_context("spawn"), args, None, plan_local_ranks(args))
    ready = wait_for_any([p.sentinel for p in procs])
    first = next(p for p in procs if p.sentinel in ready)
    first.join()
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    logger.info("%s exited with code %s", first.name, first.exitcode)
    return first.exitcode or 0


def main() -> None:
    from radixlm.config.cli_args import parse_args
    from radixlm.model_loader.hub import resolve_server_args

    logging.basicConfig(level="INFO", format="[radixlm node] %(message)s")
    sys.exit(run_worker_node(resolve_server_args(parse_args())))


if __name__ == "__main__":
    main()
