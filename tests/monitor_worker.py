"""A torchrun worker for the monitor's tests (tests/monitor_env.py): a small DDP job on the digits.

It uses what the monitor shows: a ``torchrt.data`` pipeline over scikit-learn's digits with live
previews, a ``torchrt.checkpoint`` manager that commits every ``CKPT_EVERY`` steps (a checkpoint
per epoch end too), ``torchrt.step`` with the loss, a user metric (``torchrt.log_metric``) and a
named barrier per epoch. Each step sleeps ``STEP_S`` seconds so the job spans several seconds of
series. It runs until the file ``STOP_FILE`` appears (at most ``DEADLINE_S``), so a test decides
when the job ends by what the coordinator shows, not by time; then it closes its checkpoints and
pipeline and exits 0.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import torchrt
from torchrt.checkpoint import CheckpointManager
from torchrt.data import DataSpec, build_pipeline

DEADLINE_S = 600.0  # a safety net only: the tests stop the job with the stop file
DATASET = "digits"


def stopping(stop: Path, started: float) -> bool:
    """Whether any rank saw the stop file (or the deadline): every rank leaves at the same step."""
    flag = torch.tensor([float(stop.exists() or time.monotonic() - started > DEADLINE_S)])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def main() -> None:
    ctx = torchrt.init()
    started = time.monotonic()
    stop = Path(os.environ["STOP_FILE"])
    step_s = float(os.environ.get("STEP_S", "0.05"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = build_pipeline(DataSpec(name=DATASET, kind="digits", batch_size=16, tail="pad", workers=0,
                                   preview_interval=0.3, report_interval=1.0), ctx.rank, ctx.world_size)
    ckpt = CheckpointManager(os.environ["CKPT_DIR"], every_steps=int(os.environ.get("CKPT_EVERY", "10")), keep=2,
                             replicated=("model", "optim", "data", "progress"))
    state = {"model": net, "optim": optimizer, "data": data, "progress": {"step": 0}}
    step, done = 0, False
    while not done:
        for batch in data:
            logits = model(batch["input"].float() / 16.0)
            loss = F.cross_entropy(logits, batch["target"], ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            state["progress"]["step"] = step
            torchrt.step(loss=loss.item(), samples=int(batch["mask"].sum()))
            if ctx.rank == 0:
                torchrt.log_metric("train/loss", loss.item(), step)
            ckpt.maybe_save(state, step)
            time.sleep(step_s)
            done = stopping(stop, started)
            if done:
                break
        if not done:
            torchrt.barrier(f"epoch-{data.epoch}")
    ckpt.close()
    data.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
