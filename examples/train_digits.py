"""Train a small classifier on scikit-learn's digits with DDP, fed by torchrt.data.

The dataset comes from the config's ``data`` section (``configs/digits.yaml``):
``torchrt.data.pipeline_for("digits")`` builds this rank's share of the job's
global, per-epoch order. Padded rows carry target -100, which cross_entropy
ignores, so every sample counts exactly once per epoch. ``EPOCHS`` (default 3)
and ``RESULT_DIR`` (rank 0 writes ``train.json``) are read from the environment.
"""

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import torchrt
from torchrt.data import pipeline_for


def main() -> None:
    ctx = torchrt.init()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(ctx.device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = pipeline_for("digits")
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
            optimizer.step()
            real = batch["mask"].to(ctx.device)
            seen += torch.stack([real.sum(), ((logits.argmax(1) == targets) & real).sum()]).float()
        dist.all_reduce(seen)
        torchrt.barrier(f"epoch-{epoch}")
        history.append({"epoch": epoch, "samples": int(seen[0]), "accuracy": float(seen[1] / seen[0])})
        if ctx.rank == 0:
            print(f"epoch {epoch}: {history[-1]}", flush=True)
    data.close()
    result_dir = os.environ.get("RESULT_DIR")
    if result_dir and ctx.rank == 0:
        Path(result_dir, "train.json").write_text(json.dumps({"world_size": ctx.world_size, "history": history}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
