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

ingest.ranks_1000.{cpu_share,snapshot_ms}
    A coordinator in this process, and ``_ingest_sim.py`` in another: 125
    simulated nodes of 8 ranks form one round, then each rank sends one
    ``step`` report a second (every 10th a logged ``step_progress``) and each
    node one ``node_stats`` sample, spread over the second; ranks send their
    batches without a reply and one last request at the end, as torchrt's
    reporter does. ``cpu_share``: this process's CPU time over a window of
    steady reporting / the window's wall time (a fraction of one core; goal
    <= 0.25). ``snapshot_ms``: the coordinator's ``snapshot()`` and its JSON
    encoding, timed on its event loop once a second during the window (p50 and
    max; goal <= 50 ms). ``reports``: the ranks' reports sent and the step
    reports the view folded (equal: none lost), error answers, refusals.

stack_dump_s.{p50,max}
    ``torchrun --nproc-per-node=8`` running ``_stacks_worker.py`` (a training
    loop: matrix product, gloo all_reduce, torchrt.step, ~100 steps/s) against
    a coordinator in this process; repeated ``dump_stacks`` of every rank by
    an operator connection: seconds from the request until the reply with all
    8 ranks' stacks (written to the run directory); goal <= 2 s.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from _common import Json, free_port, log, machine, sectioned_args, write_results

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_telemetry_worker.py"
STACKS_WORKER = HERE / "_stacks_worker.py"
INGEST_SIM = HERE / "_ingest_sim.py"
sys.path.insert(0, str(HERE.parent))  # torchrt, run from a checkout


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


def _coordinator(run_dir: Path):  # noqa: ANN202  (torchrt is imported only once the path is set)
    from torchrt.coordinator import Coordinator, CoordinatorConfig

    coordinator = Coordinator(CoordinatorConfig(run_dir=run_dir, port=0))
    coordinator.start()
    return coordinator


def ingest(nodes: int, per_node: int, window_s: float) -> Json:
    from torchrt.contract import EventType

    with tempfile.TemporaryDirectory() as tmp:
        coordinator = _coordinator(Path(tmp) / "run")
        sim = subprocess.Popen([sys.executable, str(INGEST_SIM), coordinator.endpoint, str(nodes), str(per_node)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE.parent,
                               env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        try:
            assert sim.stdout is not None
            line = sim.stdout.readline()
            if not line.startswith("ready"):
                return {"value": None, "reason": f"the simulator did not start: {line!r}"}
            time.sleep(3.0)  # every rank reporting, spread over the second
            me = psutil.Process()
            cpu0, wall0 = sum(me.cpu_times()[:2]), time.monotonic()
            snapshot_ms = []

            def timed() -> float:
                started = time.perf_counter()
                json.dumps(coordinator.snapshot(), separators=(",", ":"), default=str)
                return (time.perf_counter() - started) * 1e3

            while time.monotonic() - wall0 < window_s:
                snapshot_ms.append(coordinator.read_view(lambda _view: timed()))  # timed on the loop
                time.sleep(1.0)
            cpu_share = (sum(me.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
            snapshot_bytes = len(json.dumps(coordinator.snapshot(), default=str))
            sim.stdin.close()
            counts = json.loads(sim.stdout.readlines()[-1])  # after every rank's last request was answered
            sim.wait(30)
            counts["folded"] = coordinator.read_view(  # every step report the view took (1 s points of 15 min)
                lambda view: sum(view.points("workers", "steps", "step_ms")["count"]))
            counts["refusals_recorded"] = coordinator.read_view(
                lambda view: view.snapshot()["alerts"]["counts"].get(EventType.REPORT_REFUSED, 0))
        finally:
            if sim.poll() is None:
                sim.kill()
            coordinator.stop()
    snapshot_ms.sort()
    return {"cpu_share": {"value": round(cpu_share, 3), "goal": 0.25},
            "snapshot_ms": {"value": round(statistics.median(snapshot_ms), 2), "goal": 50.0,
                            "max": round(snapshot_ms[-1], 2), "samples": len(snapshot_ms),
                            "snapshot_bytes": snapshot_bytes},
            "ranks": nodes * per_node, "nodes": nodes, "window_s": window_s, "reports": counts}


def stack_dumps(ranks: int, dumps: int) -> Json:
    from torchrt.contract import EventType, Op, Role, StackAnswer
    from torchrt.coordinator import CoordinatorClient

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, stop_file = Path(tmp) / "run", Path(tmp) / "stop"
        coordinator = _coordinator(run_dir)
        argv = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend=torchrt",
                f"--rdzv-endpoint={coordinator.endpoint}", "--rdzv-id=bench-stacks", "--nnodes=1",
                f"--nproc-per-node={ranks}", "--rdzv-conf", f"run_dir={run_dir},is_host=false", str(STACKS_WORKER)]
        env = {**os.environ, "BENCH_STOP_FILE": str(stop_file), "OMP_NUM_THREADS": "1"}
        job = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=HERE.parent)
        client = CoordinatorClient(coordinator.endpoint, role=Role.OPERATOR)
        took: list[float] = []
        slowest: list[float] = []
        try:
            client.connect(timeout=10)
            deadline = time.monotonic() + 300
            while True:  # until every rank is up and answers
                reply = client.request(Op.DUMP_STACKS, timeout=30)
                answered = [r for r, e in reply["dump"]["ranks"].items() if e["answer"] == StackAnswer.ANSWERED]
                if len(answered) == ranks:
                    break
                if time.monotonic() > deadline or job.poll() is not None:
                    return {"value": None, "reason": f"{len(answered)} of {ranks} ranks answered"}
                time.sleep(1.0)
            for _ in range(dumps):
                started = time.monotonic()
                reply = client.request(Op.DUMP_STACKS, timeout=30)
                took.append(time.monotonic() - started)
                entries = reply["dump"]["ranks"].values()
                if sum(e["answer"] == StackAnswer.ANSWERED for e in entries) != ranks:
                    return {"value": None, "reason": f"a dump missed ranks: {reply['dump']['ranks']}"}
                slowest.append(max(e["after_s"] for e in entries))
                time.sleep(0.25)
            kept = len(list((run_dir / "stacks").glob("*.json")))
            announced = sum(e["type"] == EventType.STACKS_DUMPED for e in coordinator.events.recent(0))
        finally:
            client.close()
            stop_file.touch()
            try:
                job.wait(120)
            except subprocess.TimeoutExpired:
                for proc in [*psutil.Process(job.pid).children(recursive=True), job]:
                    proc.kill()
            coordinator.stop()
    took.sort()
    return {"p50": {"value": round(statistics.median(took), 4), "goal": 2.0},
            "max": {"value": round(took[-1], 4), "goal": 2.0},
            "slowest_rank_p50_s": round(statistics.median(slowest), 4), "dumps": len(took), "ranks": ranks,
            "files_kept": kept, "events": announced}


SECTIONS = ("overhead", "ingest", "stacks")


def main() -> None:
    args, only = sectioned_args(__doc__, SECTIONS, quick="fewer blocks (about a minute)")
    blocks = 10 if args.quick else 40
    results: Json = {"machine": machine(), "quick": args.quick}
    if "overhead" in only:
        results["overhead"] = {}
        for name, step_ms, block in (("10ms", 10.0, 50), ("100ms", 100.0, 5)):
            log(f"overhead.{name}: {blocks} blocks of {block} steps each way")
            results["overhead"][name] = overhead(step_ms, block, blocks)
            log(f"overhead.{name} = {results['overhead'][name]}")
    if "ingest" in only:
        log("ingest.ranks_1000: 125 nodes x 8 simulated ranks reporting every second")
        results["ingest"] = {"ranks_1000": ingest(125, 8, window_s=10.0 if args.quick else 30.0)}
        log(f"ingest.ranks_1000 = {results['ingest']['ranks_1000']}")
    if "stacks" in only:
        log("stack_dump_s: dumps of every rank of an 8-rank torchrun job")
        results["stack_dump_s"] = stack_dumps(8, dumps=10 if args.quick else 30)
        log(f"stack_dump_s = {results['stack_dump_s']}")
    write_results(args.json, results)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
