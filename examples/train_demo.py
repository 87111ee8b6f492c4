"""The demo job: a small CNN learns scikit-learn's digits on every worker torchrt gives it.

Started by ``torchrt run configs/demo.yaml`` (``./demo.sh`` runs two such nodes). It shows the
runtime at work: ``torchrt.init()`` joins the process group (NCCL on CUDA when every node has a
GPU, Gloo on CPU otherwise: the coordinator decides, ``TORCHRT_BACKEND``);
``torchrt.data.pipeline_for("digits")`` feeds this rank its share of each global step (live
sample previews on, ``data.digits.preview_interval``); ``torchrt.checkpoint`` saves
asynchronously every ``checkpoint.every_steps`` steps and at each epoch's end, and a restarted
job resumes from the newest committed checkpoint: weights, optimizer, RNG and the data
position, so every sample of an epoch is trained on exactly once; ``torchrt.step()`` reports
every step (loss, samples, accuracy) to the coordinator and TensorBoard.

The config's ``demo`` section sets the pace and the faults: ``demo.epochs``,
``demo.step_delay`` (seconds each step sleeps, so that a job of a few seconds of CPU is
watchable: the default config trains for about two minutes) and ``demo.faults``
(:mod:`launch.faults`: kill a worker, stop a node, a slow rank).

With ``RESULT_DIR`` set, each rank writes ``seen-r<rank>-round<round>.jsonl`` (per step: epoch,
step and the global indices of the samples it trained on), rank 0 writes
``start-round<round>.json`` (the step it resumed from) and, at the end, ``demo.json``.
"""

import json
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import torchrt
from launch.faults import FaultInjector
from torchrt.checkpoint import CheckpointManager, RNGState
from torchrt.config import DemoSection, config_from_environment
from torchrt.data import pipeline_for


def cnn() -> nn.Module:
    """Two 3x3 convolutions and a classifier for 1x8x8 images: ~45k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


class SeenLog:
    """What this rank trained on, one JSON line per step (``RESULT_DIR``; none without it)."""

    def __init__(self, ctx: torchrt.WorkerContext) -> None:
        result_dir = os.environ.get("RESULT_DIR")
        self.dir = Path(result_dir) if result_dir else None
        self.ctx = ctx
        self._file = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.dir / f"seen-r{ctx.rank}-round{ctx.round}.jsonl", "a", buffering=1)

    def started(self, resumed_from: int) -> None:
        if self.dir is not None and self.ctx.rank == 0:
            (self.dir / f"start-round{self.ctx.round}.json").write_text(json.dumps({"resumed_from": resumed_from}))

    def step(self, epoch: int, step: int, index: torch.Tensor) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"epoch": epoch, "step": step,
                                         "index": index[index >= 0].tolist()}) + "\n")

    def finished(self, summary: dict) -> None:
        if self._file is not None:
            self._file.close()
        if self.dir is not None and self.ctx.rank == 0:
            (self.dir / "demo.json").write_text(json.dumps(summary))


# A 1-channel first convolution's weight gradient comes with other (equivalent) strides than the
# weight's own; DDP says so at every step, and it is harmless.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def main() -> None:
    ctx = torchrt.init()
    config = config_from_environment()
    demo = config.demo if config is not None else DemoSection()
    torch.manual_seed(0)
    net = cnn().to(ctx.device)
    model = DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = pipeline_for("digits")
    state = {"model": net, "optim": optimizer, "data": data, "rng": RNGState(), "progress": {"step": 0}}
    spec = config.checkpoint.spec if config is not None else None
    ckpt = CheckpointManager.from_spec(spec, replicated=("model", "optim", "data", "progress")) if spec else None
    restored = ckpt.load_latest(state, per_rank_on_resize="keep") if ckpt else None
    step = state["progress"]["step"]
    faults = FaultInjector(demo.faults, ctx.rank, ctx.run_id, data)
    seen = SeenLog(ctx)
    seen.started(step)
    if ctx.rank == 0:
        where = f"resumed from step {restored.step}" if restored else "from scratch"
        print(f"demo: {ctx.world_size} workers on {ctx.backend} ({ctx.device.type}), {where}, "
              f"epoch {data.epoch} of {demo.epochs}", flush=True)
    history = []
    for epoch in range(data.epoch, demo.epochs):
        totals = torch.zeros(2, device=ctx.device)  # samples, correct
        for batch in data:
            faults.before_step(step + 1)
            inputs = batch["input"].to(ctx.device, non_blocking=True)
            targets = batch["target"].to(ctx.device, non_blocking=True)
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets, ignore_index=-100)  # padded rows: target -100
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # waits for an in-flight checkpoint's staging by itself
            real = batch["mask"].to(ctx.device)
            correct = ((logits.argmax(1) == targets) & real).sum()
            totals += torch.stack([real.sum(), correct]).float()
            if demo.step_delay:
                time.sleep(demo.step_delay)
            step += 1
            samples = int(batch["mask"].sum())
            torchrt.step(loss=loss.detach(), samples=samples, accuracy=correct / max(samples, 1))
            seen.step(epoch, step, batch["index"])
            state["progress"]["step"] = step
            if ckpt:
                ckpt.maybe_save(state, step)
        dist.all_reduce(totals)
        torchrt.barrier(f"epoch-{epoch}")
        if ckpt:
            ckpt.save(state, step)
        history.append({"epoch": epoch, "samples": int(totals[0]), "accuracy": float(totals[1] / totals[0])})
        torchrt.log_metric("train/epoch_accuracy", history[-1]["accuracy"], epoch)
        if ctx.rank == 0:
            print(f"demo: epoch {epoch}: {history[-1]}", flush=True)
    if ckpt:
        ckpt.close()
    data.close()
    seen.finished({"world_size": ctx.world_size, "backend": ctx.backend, "steps": step, "history": history,
                   "resumed_from": restored.step if restored else None})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
