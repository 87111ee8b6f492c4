"""Worker of the telemetry overhead benchmark (run by ``torchrun --rdzv-backend=torchrt``).

Each step is a fixed amount of work, calibrated once on rank 0 to take about
``$BENCH_STEP_MS`` (matrix products), then a gloo ``all_reduce`` of one float;
steps with ``torchrt.step(loss=..., samples=...)`` ("on") and without it
("off") alternate in blocks of ``$BENCH_BLOCK`` steps, so that both see the same
noise of the shared machine. Each rank writes the mean step time of every
block (milliseconds, by kind) and the cost of one call timed back to back
(microseconds) to ``$BENCH_OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

import torchrt

CALLS = 20_000  # torchrt.step calls timed back to back at the end: the call's own cost

def work(a: torch.Tensor, repeats: int) -> torch.Tensor:
    out = a
    for _ in range(repeats):
        out = torch.tanh(out @ a)
    return out


def calibrate(a: torch.Tensor, target_s: float) -> int:
    repeats, elapsed = 1, 0.0
    while elapsed < 0.2:
        repeats *= 2
        started = time.perf_counter()
        work(a, repeats)
        elapsed = time.perf_counter() - started
    return max(1, round(repeats * target_s / elapsed))


def main() -> None:
    ctx = torchrt.init()
    step_ms, block, blocks = (float(os.environ["BENCH_STEP_MS"]), int(os.environ["BENCH_BLOCK"]),
                              int(os.environ["BENCH_BLOCKS"]))
    torch.set_num_threads(1)
    a = torch.randn(96, 96) / 10
    repeats = torch.tensor([calibrate(a, step_ms / 1000) if ctx.rank == 0 else 0])
    dist.broadcast(repeats, 0)
    means: dict[str, list[float]] = {"on": [], "off": []}
    value = torch.ones(1)
    for index in range(blocks * 2 + 1):
        kind = "on" if index % 2 else "off"
        started = time.perf_counter()
        for _ in range(block):
            loss = work(a, int(repeats)).mean()
            dist.all_reduce(value)
            if kind == "on":
                torchrt.step(loss=loss, samples=32)
        if index:  # the first block warms up
            means[kind].append((time.perf_counter() - started) * 1000 / block)
    loss = torch.tensor(0.5)
    started = time.perf_counter()
    for _ in range(CALLS):
        torchrt.step(loss=loss, samples=32)
    call_us = (time.perf_counter() - started) / CALLS * 1e6
    out = Path(os.environ["BENCH_OUT_DIR"], f"rank{ctx.rank}.json")
    out.write_text(json.dumps({"rank": ctx.rank, "repeats": int(repeats), "block_ms": means, "call_us": call_us}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
