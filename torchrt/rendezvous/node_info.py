"""What a node tells the coordinator about itself when it says hello."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

import torch

logger = logging.getLogger(__name__)


def describe_node(local_addr: str | None) -> dict[str, Any]:
    """Hostname, address, workers per node, devices and versions of this node.

    ``addr`` None asks the client to fill in the address of its connection to
    the coordinator: the interface that reaches the coordinator is the one its
    peers can reach too.
    """
    cuda = torch.cuda.is_available()
    return {
        "hostname": socket.gethostname(),
        "addr": local_addr,
        "pid": os.getpid(),
        "nproc": torchrun_nproc_per_node(),
        "device_kind": "cuda" if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


def torchrun_nproc_per_node() -> int | None:
    """``--nproc-per-node`` of the torchrun agent this handler runs in, if it is one."""
    if os.path.basename(sys.argv[0]) not in ("torchrun", "run.py", "__main__.py"):
        return None
    try:
        from torch.distributed.run import determine_local_world_size, get_args_parser

        args, _ = get_args_parser().parse_known_args(sys.argv[1:])
        return int(determine_local_world_size(args.nproc_per_node))
    except (SystemExit, Exception) as e:  # not torchrun's command line after all
        logger.debug("could not read --nproc-per-node from %s: %s", sys.argv, e)
        return None


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine (so a coordinator for it may start here)."""
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""):
        return True
    names = {socket.gethostname(), socket.getfqdn()}
    if host in names:
        return True
    try:
        import psutil

        local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(local & resolved)
