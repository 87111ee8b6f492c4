"""The demo end to end: ``python -m launch.demo`` (a coordinator and two ``torchrt run`` nodes of
configs/demo.yaml, 2 x 2 gloo workers of examples/train_demo.py) as ``./demo.sh`` runs it.

* A one-epoch run whose worker of rank 3 is killed at step 20 (``demo.faults.kill_worker``)
  finishes with status 0; the run directory holds both nodes, four workers per round, the
  dataset, committed checkpoints, the restart and the restore; every rank's log of the sample
  indices it trained on, cut where the next round resumed, covers the epoch exactly once;
  the fault fired once (not again when the restarted job passed step 20).
* A demo config that does not validate: exit 2 with one line naming the key, nothing started.
* SIGINT to the demo's process group (a terminal's Ctrl-C) stops every process it started, run
  as ``./demo.sh`` does or as ``DEMO_MODE=true torchrt coordinator HOST:PORT``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from monitor.app import MonitorOptions, create_app
from monitor.replay_source import ReplaySource
from torchrt.coordinator import ping

from tests.helpers import events, free_port, get_json, http_get, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DIGITS = 1797
QUICK = ["demo.epochs=1", "demo.step_delay=0", "demo.faults.stop_node=null", "demo.faults.slow_rank=null",
         "checkpoint.every_steps=5"]


def demo(port: int, run_dir: Path, overrides: list[str], *, result_dir: Path | None = None, monitor: bool = False,
         log: Path | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "launch.demo", "--once", "--port", str(port), "--run-dir", str(run_dir),
            *([] if monitor else ["--no-monitor"])]
    for value in overrides:
        argv += ["--set", value]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"RESULT_DIR": str(result_dir)} if result_dir else {})}
    out = open(log, "wb") if log else subprocess.PIPE
    # a session of its own: the test signals its process group as a terminal's Ctrl-C would
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def trained_on(result_dir: Path) -> list[int]:
    """The sample indices the job's model was trained on: each round's steps up to the step the
    next round resumed from (later steps were lost with the round and done again)."""
    resumed = {int(p.stem.removeprefix("start-round")): json.loads(p.read_text())["resumed_from"]
               for p in result_dir.glob("start-round*.json")}
    rounds = sorted(resumed)
    ends = {r: (resumed[after] if after is not None else float("inf"))
            for r, after in zip(rounds, [*rounds[1:], None])}
    indices: list[int] = []
    for path in result_dir.glob("seen-r*-round*.jsonl"):
        round_number = int(path.stem.rpartition("-round")[2])
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if resumed[round_number] < row["step"] <= ends[round_number]:
                indices += row["index"]
    return sorted(indices)


def watch_live(log: Path, proc: subprocess.Popen[bytes]) -> dict:
    """What the demo's live monitor shows while the job trains: its nodes, workers and previews."""
    def url() -> str | None:
        found = re.search(r"torchrt monitor at (http://\S+)", log.read_text())
        return found.group(1) if found else None

    base = wait_until(lambda: url() or proc.poll() is not None, 120, "the monitor's URL")
    assert isinstance(base, str), log.read_text()[-4000:]

    def seen() -> dict | None:
        assert proc.poll() is None, "the demo ended before its monitor showed the job:\n" + log.read_text()[-4000:]
        status, body = http_get(f"{base}/api/v1/datasets/digits/previews")
        if status == 404:  # no dataset 'digits' until the workers registered it
            return None
        assert status == 200, (status, body[:300])
        previews = json.loads(body)["items"]
        shown = {"previews": previews,
                 "workers": get_json(f"{base}/api/v1/pages/workers/workers?limit=100")["items"],
                 "nodes": get_json(f"{base}/api/v1/pages/rendezvous/nodes?limit=100")["items"]}
        return shown if shown["previews"] and len(shown["workers"]) == 4 and len(shown["nodes"]) == 2 else None

    return wait_until(seen, 120, "the live monitor to show 2 nodes, 4 workers and sample previews", interval=0.5)


def test_killed_worker_restarts_resumes_and_every_sample_is_trained_on_once(tmp_path: Path) -> None:
    run_dir, results, log = tmp_path / "run", tmp_path / "results", tmp_path / "demo.log"
    proc = demo(free_port(), run_dir, [*QUICK, "demo.step_delay=0.05", "demo.faults.kill_worker={rank: 3, step: 20}"],
                result_dir=results, log=log, monitor=True)
    try:
        live = watch_live(log, proc)
        assert {p["rank"] for p in live["previews"]} <= {0, 1, 2, 3}
        assert all(p["kind"] == "image" and p["png_b64"] for p in live["previews"]), live["previews"][:1]  # digits
        assert proc.wait(240) == 0, log.read_text()[-6000:]
    finally:
        proc.kill()
    # The monitor replaying the run directory shows the whole run.
    client = create_app(ReplaySource(run_dir), MonitorOptions()).test_client()
    snapshot = client.get("/api/v1/snapshot").get_json()["snapshot"]
    assert snapshot["checkpoints"]["committed_total"] >= 2 and snapshot["datasets"]["digits"]["ranks"] == 4
    assert client.get("/api/v1/pages/rendezvous/nodes").get_json()["total"] == 2
    assert client.get("/api/v1/events?type=restart").get_json()["items"], "the restart is in the monitor's log"
    output = log.read_text()
    assert output.count("demo fault: rank 3") == 1, "the fault fires once per job, not after the restart"
    assert "training finished with exit status 0" in output
    # --once: the record ends with the demo's end, not with the signal that stopped its coordinator
    assert events(run_dir, "shutdown")[-1]["reason"] == "the demo ended: training finished with exit status 0"

    kinds = [e["type"] for e in events(run_dir)]
    assert len({e["node"] for e in events(run_dir, "node_joined")}) == 2
    rounds = [e["round"] for e in events(run_dir, "round_completed")]
    assert len(rounds) >= 2, "the kill made a new round"
    started = events(run_dir, "worker_started")
    assert sorted(e["rank"] for e in started if e["round"] == rounds[-1]) == [0, 1, 2, 3]
    assert {"restart", "checkpoint_committed", "checkpoint_restored", "dataset_registered"} <= set(kinds)
    assert any(e["rank"] == 3 for e in events(run_dir, "worker_stopped"))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["datasets"]["digits"]["size"] == DIGITS and state["datasets"]["digits"]["ranks"] == 4
    assert state["workers"]["world_size"] == 4 and state["workers"]["nodes"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")), "committed checkpoints"

    summary = json.loads((results / "demo.json").read_text())
    assert summary["world_size"] == 4 and summary["backend"] == "gloo"
    assert summary["resumed_from"] is not None and 0 < summary["resumed_from"] < 20
    checkpoints = snapshot["checkpoints"]  # one restore of the job, by its four ranks; nothing left in flight
    assert (checkpoints["restores_total"], checkpoints["last_restore"]["step"], checkpoints["last_restore"]["ranks"]) \
        == (1, summary["resumed_from"], 4)
    assert checkpoints["saving"] == []
    assert trained_on(results) == list(range(DIGITS)), "every sample of the epoch exactly once"


def test_broken_demo_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    port = free_port()
    proc = demo(port, tmp_path / "run", ["demo.faults.kill_worker={rank: 4, step: 20}"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.decode().strip().splitlines()[-1].endswith(
        "demo.yaml: demo.faults.kill_worker.rank: expected a rank < nodes.max x nodes.nproc_per_node (4), got 4")
    assert ping(f"127.0.0.1:{port}", timeout=0.5) is None
    assert not (tmp_path / "run").exists()


def demo_mode_coordinator(port: int, run_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """``DEMO_MODE=true torchrt coordinator HOST:PORT``: a coordinator that also starts the demo job."""
    argv = [str(Path(sys.executable).with_name("torchrt")), "coordinator", f"127.0.0.1:{port}", "--run-dir",
            str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DEMO_MODE": "true"}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.parametrize("entry", ["demo.sh", "DEMO_MODE"])
def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path, entry: str) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "demo.log"
    if entry == "demo.sh":
        proc = demo(free_port(), run_dir, ["demo.step_delay=0.2", "demo.faults.kill_worker=null"], monitor=True,
                    log=log)
    else:
        proc = demo_mode_coordinator(free_port(), run_dir, log)
    try:
        wait_until(lambda: len(events(run_dir, "worker_started")) == 4, 120, "the demo's four workers")
        tree = psutil.Process(proc.pid).children(recursive=True)
        # launch.demo starts the coordinator as a child; with DEMO_MODE the coordinator is the root
        assert len(tree) >= (1 if entry == "demo.sh" else 0) + 2 + 2 + 4, "coordinator, 2 nodes, 2 agents, 4 workers"
        os.killpg(proc.pid, signal.SIGINT)
        # torchrt run (the demo's nodes) exits 130; a coordinator that drained exits 0, as without DEMO_MODE
        assert proc.wait(60) == (128 + signal.SIGINT if entry == "demo.sh" else 0), log.read_text()[-4000:]
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        proc.kill()
    assert events(run_dir, "shutdown"), "the coordinator drained and recorded its shutdown"
