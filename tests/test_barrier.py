"""torchrt.barrier across real processes: nobody leaves a call before everybody arrived."""

from __future__ import annotations

import os
import random
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import free_port

ROUNDS = 150


def _worker(rank: int, world: int, port: int, failures) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    for key in [k for k in os.environ if k.startswith("TORCHRT_")]:
        del os.environ[key]
    import torchrt

    torchrt.init(backend="gloo", timeout=timedelta(seconds=60))
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    rng = random.Random(rank)
    try:
        for i in range(ROUNDS):
            time.sleep(rng.random() * 0.003)  # jitter, so that the last to arrive varies
            store.set(f"arrived/{i}/{rank}", "1")
            torchrt.barrier("t")
            if not store.check([f"arrived/{i}/{r}" for r in range(world)]):
                failures.put(f"rank {rank} left barrier {i} before every rank arrived")
                return
        alive = [k for k in (f"torchrt/barrier/t/release/{n}" for n in range(1, ROUNDS + 1)) if store.check([k])]
        if len(alive) > 2:
            failures.put(f"rank {rank}: {len(alive)} release keys left behind")
    finally:
        dist.destroy_process_group()


def test_barrier_holds_everyone_until_the_last_arrives_and_cleans_up():
    world = 3
    failures = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(world, free_port(), failures), nprocs=world, start_method="spawn")
    problems = []
    while not failures.empty():
        problems.append(failures.get())
    assert problems == []
