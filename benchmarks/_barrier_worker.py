"""Worker of the barrier benchmark (run by ``torchrun --rdzv-backend=torchrt``).

After ``torchrt.init()`` and a warm-up, it times ``$BENCH_ITERS`` calls of
``torchrt.barrier("bench")`` and as many of gloo's ``dist.barrier()``, one
``perf_counter`` interval per call. The two kinds alternate in blocks of
``BLOCK`` calls so that both see the same background noise of the shared
machine. Each rank writes ``rank<r>.json`` (samples in microseconds) to
``$BENCH_OUT_DIR``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

import torchrt

WARMUP = 20
BLOCK = 50


def timed(call: Callable[[], object], count: int) -> list[float]:
    """Microseconds per call, each call timed on its own."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def main() -> None:
    ctx = torchrt.init()
    iters = int(os.environ.get("BENCH_ITERS", "300"))
    kinds: dict[str, Callable[[], object]] = {
        "torchrt": lambda: torchrt.barrier("bench"),
        "gloo": dist.barrier,
    }
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    for call in kinds.values():
        timed(call, WARMUP)
    done = 0
    while done < iters:
        block = min(BLOCK, iters - done)
        for name, call in kinds.items():
            samples[name] += timed(call, block)
        done += block
    out = Path(os.environ["BENCH_OUT_DIR"], f"rank{ctx.rank}.json")
    out.write_text(json.dumps({"rank": ctx.rank, "world_size": ctx.world_size, "samples_us": samples}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
