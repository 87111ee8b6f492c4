"""Worker of the recovery benchmark (run by torchrun, under either rendezvous backend).

Joins the process group with ``torchrt.init()`` (gloo on CPU under both
backends), appends one line ``<time.time()> <rank> <world_size> <pid>`` to
``$BENCH_START_FILE`` as soon as the group is formed, then all-reduces a small
tensor with a short pause for ``$BENCH_RUN_S`` seconds (default 600), so the
job is busy in collectives whenever a node is killed.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

import torchrt

STEP_PAUSE_S = 0.05


def record_start(path: str, rank: int, world_size: int) -> None:
    """One line per worker start; a single O_APPEND write, so concurrent writers never interleave."""
    line = f"{time.time():.6f} {rank} {world_size} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main() -> None:
    ctx = torchrt.init()
    record_start(os.environ["BENCH_START_FILE"], ctx.rank, ctx.world_size)
    deadline = time.monotonic() + float(os.environ.get("BENCH_RUN_S", "600"))
    value = torch.ones(1)
    while time.monotonic() < deadline:
        dist.all_reduce(value)
        time.sleep(STEP_PAUSE_S)


if __name__ == "__main__":
    main()
