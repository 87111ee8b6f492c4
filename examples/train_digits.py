"""Train a small classifier on scikit-learn's digits with DDP, fed by torchrt.data.

The dataset and the checkpoint settings come from the config (``configs/digits.yaml``):
``torchrt.data.pipeline_for("digits")`` builds this rank's share of the job's global,
per-epoch order, and when the config has a ``checkpoint`` section the job checkpoints
asynchronously every ``every_steps`` steps and at each epoch's end, and resumes from the
newest committed checkpoint, at any world size. Padded rows carry target -100, which
cross_entropy ignores, so every sample counts exactly once per epoch.
``EPOCHS`` (default 3) and ``RESULT_DIR`` (rank 0 writes ``train.json``) come from the
environment.
"""

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import torchrt
from torchrt.checkpoint import CheckpointManager, RNGState
from torchrt.config import config_from_environment
from torchrt.data import pipeline_for


def main() -> None:
    ctx = torchrt.init()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    model = DistributedDataParallel(net.to(ctx.device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = pipeline_for("digits")
    state = {"model": net, "optim": optimizer, "data": data, "rng": RNGState(), "progress": {"step": 0}}
    config = config_from_environment()
    spec = config.checkpoint.spec if config is not None else None
    ckpt = CheckpointManager.from_spec(spec, replicated=("model", "optim", "data", "progress")) if spec else None
    # RNG streams are per rank: at another world size they start afresh (everything else carries over)
    restored = ckpt.load_latest(state, per_rank_on_resize="keep") if ckpt else None
    step = state["progress"]["step"]
    if restored and ctx.rank == 0:
        print(f"resumed from step {restored.step} (saved at world size {restored.saved_world_size})", flush=True)
    epochs = int(os.environ.get("EPOCHS", "3"))
    history = []
    for epoch in range(data.epoch, epochs):
        seen = torch.zeros(2, device=ctx.device)  # samples, correct
        for batch in data:
            inputs = batch["input"].to(ctx.device, torch.float32) / 16.0
            targets = batch["target"].to(ctx.device)
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets, ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # waits for an in-flight checkpoint's staging by itself
            real = batch["mask"].to(ctx.device)
            seen += torch.stack([real.sum(), ((logits.argmax(1) == targets) & real).sum()]).float()
            step += 1
            state["progress"]["step"] = step
            if ctx.rank == 0:
                torchrt.log_metric("train/loss", loss.item(), step)  # -> the job's TensorBoard
            if ckpt:
                ckpt.maybe_save(state, step)
        dist.all_reduce(seen)
        torchrt.barrier(f"epoch-{epoch}")
        if ckpt:
            ckpt.save(state, step)
        history.append({"epoch": epoch, "samples": int(seen[0]), "accuracy": float(seen[1] / seen[0])})
        torchrt.log_metric("train/accuracy", history[-1]["accuracy"], epoch)
        if ctx.rank == 0:
            print(f"epoch {epoch}: {history[-1]}", flush=True)
    if ckpt:
        ckpt.close()
    data.close()
    result_dir = os.environ.get("RESULT_DIR")
    if result_dir and ctx.rank == 0:
        Path(result_dir, "train.json").write_text(json.dumps({
            "world_size": ctx.world_size, "history": history, "resumed_from": restored.step if restored else None}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
