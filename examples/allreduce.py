"""A tiny job for tests and the quick start: a few all_reduces over the job's backend.

Each step all-reduces a tensor holding every rank's ``rank + 1`` and checks the
sum, so a wrong world or a mixed-up round fails loudly. Environment knobs used
by the tests: ``STEPS`` (default 5), ``STEP_SECONDS`` (pause per step),
``CRASH_ONCE_FILE`` (rank 1 exits with status 1 the first time, creating the
file), ``RESULT_DIR`` (each rank writes ``rank<r>.json`` with what it saw).
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import torchrt


def main() -> int:
    ctx = torchrt.init()
    steps = int(os.environ.get("STEPS", "5"))
    pause = float(os.environ.get("STEP_SECONDS", "0"))
    crash_file = os.environ.get("CRASH_ONCE_FILE")
    if crash_file and ctx.rank == 1 and not os.path.exists(crash_file):
        Path(crash_file).write_text(str(os.getpid()))
        print("rank 1 crashing on purpose", flush=True)
        sys.exit(1)
    expected = ctx.world_size * (ctx.world_size + 1) / 2
    for step in range(steps):
        value = torch.tensor([float(ctx.rank + 1)], device=ctx.device)
        dist.all_reduce(value)
        if value.item() != expected:
            raise RuntimeError(f"step {step}: all_reduce gave {value.item()}, expected {expected}")
        if pause:
            time.sleep(pause)
    waited = torchrt.barrier("end")
    result_dir = os.environ.get("RESULT_DIR")
    if result_dir:
        Path(result_dir, f"rank{ctx.rank}.json").write_text(json.dumps({
            "rank": ctx.rank, "world_size": ctx.world_size, "round": ctx.round, "backend": ctx.backend,
            "run_id": ctx.run_id, "node_id": ctx.node_id, "steps": steps, "barrier_s": waited,
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        }))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
