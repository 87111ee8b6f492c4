"""A torchrun worker for tests/test_job_view.py: ``JOB_VIEW_MODE`` says what it does.

Every mode runs until the file ``STOP_FILE`` appears (at most 60 s), so the test decides when
the job ends; the loops call ``torchrt.step`` once per step.

* ``steps``: each step reads a batch of a ``torchrt.data`` pipeline (so the step reports carry
  epoch and position), passes ``torchrt.barrier("step-N")`` (a name per step) and sleeps 50 ms;
* ``straggle``: no collectives, so each rank's step time is its own: rank 1 sleeps 80 ms a step
  until ``SPEED_UP_FILE`` appears, every other rank (and rank 1 from then on) 20 ms;
* ``stall``: as ``straggle`` at 20 ms, but rank 1 stops stepping after 20 steps and waits in
  ``stuck_waiting`` (``time.sleep``) for the stop file;
* ``slow_data``: lock-step, as data-parallel training is (an ``all_reduce`` every step), each
  rank reading a ``torchrt.data`` pipeline; rank 1's source takes 80 ms a batch until
  ``SPEED_UP_FILE`` appears, so every rank's step time is the same and only rank 1's data wait
  stands out.
"""

from __future__ import annotations

import os
import time

import torch

import torchrt

DEADLINE_S = 60.0


def stopped(started: float) -> bool:
    return os.path.exists(os.environ["STOP_FILE"]) or time.monotonic() - started > DEADLINE_S


def steps(started: float) -> None:
    from torchrt.data import ShardedPipeline
    from torchrt.data.sources import ArraySource

    source = ArraySource({"x": torch.arange(64, dtype=torch.float32).reshape(64, 1)}, name="numbers")
    pipeline = ShardedPipeline(source, batch_size=4, workers=0, shuffle=False, preview_interval=None)
    step = 0
    while not stopped(started):
        for batch in pipeline:
            step += 1
            torchrt.barrier(f"step-{step}")
            time.sleep(0.05)
            torchrt.step(loss=1.0 / step, samples=len(batch["x"]))
            if stopped(started):
                break
    pipeline.close()


def slow_data(started: float, rank: int) -> None:
    import torch.distributed as dist

    from torchrt.data import ShardedPipeline
    from torchrt.data.sources import ArraySource

    class SlowOnRank1(ArraySource):
        def _read(self, indices):
            if rank == 1 and not os.path.exists(os.environ["SPEED_UP_FILE"]):
                time.sleep(0.08)
            return super()._read(indices)

    source = SlowOnRank1({"x": torch.arange(4096, dtype=torch.float32).reshape(4096, 1)}, name="numbers")
    pipeline = ShardedPipeline(source, batch_size=4, workers=0, shuffle=False, preview_interval=None)
    while not stopped(started):
        for batch in pipeline:
            dist.all_reduce(batch["x"].sum().reshape(1))  # lock-step: every rank waits for the slowest
            time.sleep(0.02)
            torchrt.step(samples=len(batch["x"]))
            if stopped(started):
                break
    pipeline.close()


def stuck_waiting(started: float) -> None:
    while not stopped(started):
        time.sleep(0.1)


def loop(started: float, rank: int, stall: bool) -> None:
    count = 0
    while not stopped(started):
        slow = not stall and rank == 1 and not os.path.exists(os.environ["SPEED_UP_FILE"])
        time.sleep(0.08 if slow else 0.02)
        torchrt.step(samples=1)
        count += 1
        if stall and rank == 1 and count == 20:
            stuck_waiting(started)


def main() -> None:
    ctx = torchrt.init()
    started = time.monotonic()
    mode = os.environ["JOB_VIEW_MODE"]
    if mode == "steps":
        steps(started)
    elif mode == "slow_data":
        slow_data(started, ctx.rank)
    else:
        loop(started, ctx.rank, stall=mode == "stall")


if __name__ == "__main__":
    main()
