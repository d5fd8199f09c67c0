"""Where each tensor-parallel rank runs and how it joins its group (NCCL on CUDA, gloo on CPU).

Rank numbering: node `n` of `nnodes` holds ranks `n * per_node ... (n + 1) * per_node - 1`,
`per_node = tp_size // nnodes`; rank 0 (node 0) runs the scheduler and decides every batch.
On CUDA, local rank `r` of data-parallel replica `d` uses GPU `d * per_node + r`.
"""

from __future__ import annotations

import datetime
import logging
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from radixlm.config.server_args import ServerArgs
from radixlm.distributed.group import TPGroup

logger = logging.getLogger(__name__)

DEFAULT_DIST_TIMEOUT_S = 300


@dataclass(frozen=True)
class DistInit:
    """How one rank joins its group: the rendezvous `host:port`, its rank and the group size."""

    host: str
    port: int
    rank: int
    world_size: int
    local_rank: int
    timeout_s: float


def ranks_per_node(args: ServerArgs) -> int:
    return args.tp_size // args.nnodes


def plan_local_ranks(args: ServerArgs) -> list[DistInit]:
    """The ranks this node runs, lowest first (rank 0 first on node 0); empty at tp_size 1.

    Without `dist_init_addr` (one node) a free local port is picked here, in the parent, so
    every rank of this replica gets the same one. With it, replica `dp_rank` uses port + dp_rank."""
    if args.tp_size == 1:
        return []
    if args.dist_init_addr:
        host, port = args.dist_init_addr.rsplit(":", 1)
        host, port = host.strip("[]"), int(port) + args.dp_rank
    else:
        host, port = "127.0.0.1", free_port()
    per_node = ranks_per_node(args)
    timeout = float(args.dist_timeout or DEFAULT_DIST_TIMEOUT_S)
    first = args.node_rank * per_node
    return [DistInit(host, port, first + r, args.tp_size, r, timeout) for r in range(per_node)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(args: ServerArgs, local_rank: int) -> Optional[torch.device]:
    """The device of local rank `local_rank`, made current on CUDA (Triton and NCCL use the
    current device). None keeps ModelRunner's default (tp 1, replica 0: exactly as before)."""
    dp_rank = args.dp_rank
    if args.tp_size == 1 and (dp_rank == 0 or args.device.startswith("cuda:")):
        return None
    wants_cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    index = dp_rank * ranks_per_node(args) + local_rank
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"tensor-parallel rank {local_rank} of replica {dp_rank} needs GPU {index}, but only "
            f"{torch.cuda.device_count()} are visible"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_tp_group(init: Optional[DistInit], device: Optional[torch.device]) -> TPGroup:
    """Join the group described by `init` (a single-rank group when None).

    Every collective fails after `init.timeout_s` instead of hanging when a peer is gone."""
    if init is None:
        return TPGroup.single()
    cuda = device is not None and device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(seconds=init.timeout_s)
    # Rank 0 hosts the rendezvous store; holding it here lets ranks agree on an orderly exit.
    store = dist.TCPStore(init.host, init.port, init.world_size, is_master=init.rank == 0, timeout=timeout)
    dist.init_process_group(
        backend,
        store=store,
        rank=init.rank,
        world_size=init.world_size,
        timeout=timeout,
        device_id=device if cuda else None,
    )
    logger.info(
        "tensor-parallel rank %d/%d joined (%s, %s:%d)", init.rank, init.world_size, backend, init.host, init.port
    )
    return TPGroup(init.rank, init.world_size, dist.group.WORLD, store)


def check_p2p(local_rank: int, per_node: int, device: torch.device) -> None:
    """--enable-p2p-check: log which peer GPUs this rank cannot reach directly (NCCL then goes
    through host memory, which is slower but still correct)."""
    if device.type != "cuda":
        return
    base = device.index - local_rank
    missing = [
        base + r
        for r in range(per_node)
        if base + r != device.index and not torch.cuda.can_device_access_peer(device.index, base + r)
    ]
    if missing:
        logger.warning(
            "GPU %d has no peer-to-peer access to GPUs %s; all-reduce goes through the host", device.index, missing
        )
    else:
        logger.info("GPU %d: peer-to-peer access to every local peer", device.index)
