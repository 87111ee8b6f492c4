"""Worker of the stack-dump benchmark (run by ``torchrun --rdzv-backend=torchrt``).

A training-like loop: a small matrix product, a gloo ``all_reduce`` and ``torchrt.step`` every
step, about 100 steps a second, until ``$BENCH_STOP_FILE`` exists. Rank 0 looks for the file and
the all_reduce carries its verdict, so every rank stops after the same step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

import torchrt


def main() -> None:
    ctx = torchrt.init()
    torch.set_num_threads(1)
    stop_file = Path(os.environ["BENCH_STOP_FILE"])
    a = torch.randn(64, 64) / 8
    while True:
        b = torch.tanh(a @ a)
        flags = torch.tensor([float(b.mean()), float(ctx.rank == 0 and stop_file.exists())])
        dist.all_reduce(flags)
        torchrt.step(loss=float(flags[0]), samples=32)
        if flags[1] > 0:
            break
        time.sleep(0.01)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
