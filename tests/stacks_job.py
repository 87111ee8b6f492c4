"""A torchrun job for tests/test_stacks_cli.py in which every rank gets stuck on purpose.

After one all_reduce that every rank completes, rank 0 blocks in a second ``all_reduce`` (in
``reduce``) that no other rank calls, rank 1 spins in a tight Python loop (``spin``) and every
other rank sleeps (``nap``): the stuck places of tests/stacks_worker.py, in one job.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import torchrt
from stacks_worker import nap, reduce, spin  # tests/ is this script's directory

if __name__ == "__main__":
    torchrt.init()
    dist.all_reduce(torch.ones(4))
    {0: reduce, 1: spin}.get(dist.get_rank(), nap)()
