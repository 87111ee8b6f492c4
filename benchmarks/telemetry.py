#!/usr/bin/env python
"""Telemetry benchmark: what ``torchrt.step`` costs a training loop.

Usage: ``python benchmarks/telemetry.py [--quick] [--json PATH]``

overhead.{10ms,100ms}
    ``torchrun --rdzv-backend=torchrt --nnodes=1 --nproc-per-node=2`` running
    ``_telemetry_worker.py``: steps of fixed work (calibrated to about 10 ms or
    100 ms) plus a gloo ``all_reduce``, with and without ``torchrt.step(loss=...,
    samples=...)`` in alternating blocks of the same run. value = median over
    blocks and ranks of (mean step time with telemetry) / (mean step time of
    the block before without); goal <= 1.01. The reporter (one report a
    second to the coordinator) runs in both kinds of block, as in any torchrt
    job; what is measured is the call in the loop and its flush. ``call_us``:
    one ``torchrt.step`` call timed back to back (its cost alone, which the
    ratio cannot resolve on a noisy machine: 1% of 10 ms is 100 us).

The ingest (1,000 simulated ranks against one coordinator) and stack-dump
figures of issue 9 belong to the coordinator side and are not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Json, free_port, log, machine, write_results

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_telemetry_worker.py"


def overhead(step_ms: float, block: int, blocks: int) -> Json:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        argv = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend=torchrt",
                f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=bench-telemetry", "--nnodes=1",
                "--nproc-per-node=2", "--rdzv-conf", f"run_dir={out / 'run'}", str(WORKER)]
        env = {**os.environ, "BENCH_STEP_MS": str(step_ms), "BENCH_BLOCK": str(block), "BENCH_BLOCKS": str(blocks),
               "BENCH_OUT_DIR": str(out), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800, cwd=HERE.parent)
        if done.returncode != 0:
            return {"value": None, "reason": f"torchrun exited {done.returncode}: {done.stdout[-2000:]}"}
        ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    ratios = [on / off for rank in ranks for off, on in zip(rank["block_ms"]["off"], rank["block_ms"]["on"])]
    return {"value": round(statistics.median(ratios), 4), "goal": 1.01,
            "ratio_p10_p90": [round(q, 4) for q in statistics.quantiles(ratios, n=10)[::8]],
            "step_ms_off": round(statistics.median(m for r in ranks for m in r["block_ms"]["off"]), 3),
            "step_ms_on": round(statistics.median(m for r in ranks for m in r["block_ms"]["on"]), 3),
            "call_us": round(statistics.median(r["call_us"] for r in ranks), 3),
            "blocks": len(ratios), "steps_per_block": block, "ranks": len(ranks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="fewer blocks (about a minute)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    blocks = 10 if args.quick else 40
    results: Json = {"machine": machine(), "quick": args.quick, "overhead": {}}
    for name, step_ms, block in (("10ms", 10.0, 50), ("100ms", 100.0, 5)):
        log(f"overhead.{name}: {blocks} blocks of {block} steps each way")
        results["overhead"][name] = overhead(step_ms, block, blocks)
        log(f"overhead.{name} = {results['overhead'][name]}")
    write_results(args.json, results)
    print(json.dumps(results["overhead"], indent=2))


if __name__ == "__main__":
    main()
