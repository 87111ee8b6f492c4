"""The coordinator serves the job view: real torchrun jobs, the node's own telemetry, alerts, status.

The multi-process tests run a coordinator in this process (so the live view can be read where it
lives, on the coordinator's loop: ``Coordinator.read_view``) and real torchrun agents with the
torchrt backend; the workers are tests/job_view_worker.py (which uses ``torchrt.step``) or
tests/plain_worker.py (which imports nothing of torchrt). Each job runs until the test touches
its stop file, so every check waits on what the view shows, not on time.
"""

from __future__ import annotations

import ast
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from launch.status import fetch_status, follow_events, render_status
from torchrt.contract import LIVE_PUSH, NODE_REPORTS, EventType, Op, Push, Role
from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig
from torchrt.coordinator.records import MetricsWriter
from torchrt.coordinator.run_dir import STATE_FILE, WriteHealth
from torchrt.errors import ProtocolError
from torchrt.telemetry.node import NodeStatsThread
from torchrt.view import JobView
from torchrt.view.alerts import AlertSettings
from torchrt.view.machines import MAX_WORKERS
from torchrt.view.names import VARIANTS

from tests.agents import REPO, Agent
from tests.helpers import live_and_replayed_views, events, form_round, node_client, wait_until

WORKER = Path(__file__).with_name("job_view_worker.py")
PLAIN = Path(__file__).with_name("plain_worker.py")
JOB_S = 60  # the longest any job here may take


# ------------------------------------------------------------------ helpers
def comparable(view: JobView) -> tuple[Any, Any, Any]:
    """Everything the view shows: its snapshot, every page and every series, as JSON."""
    pages = {f"{part.name}/{kind}": view.page(part.name, kind, 0, 10_000)
             for part in view.parts for kind in getattr(part, "row_kinds", ())}
    return json.loads(json.dumps(view.snapshot())), json.loads(json.dumps(pages)), view.series.dump()


def rows(coordinator: Coordinator, part: str, kind: str) -> list[dict[str, Any]]:
    return coordinator.read_view(lambda view: view.page(part, kind, 0, 1000)["items"])


def start(tmp_path: Path, alerts: AlertSettings | None = None) -> Coordinator:
    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0,
                                                alerts=alerts or AlertSettings()))
    coordinator.start()
    return coordinator


def agent(tmp_path: Path, coordinator: Coordinator, script: Path, **env: str) -> Agent:
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    return Agent(coordinator.endpoint, "1", tmp_path / "run", results, script=script, conf={"is_host": "false"},
                 env={"STOP_FILE": str(tmp_path / "stop"), "SPEED_UP_FILE": str(tmp_path / "faster"), **env})


def finish(tmp_path: Path, job: Agent, coordinator: Coordinator) -> None:
    """Let the job end, wait for its agent and for the record of its end; stop the coordinator."""
    (tmp_path / "stop").touch()
    try:
        assert job.wait(JOB_S) == 0, job.log()
    finally:
        job.close()
    wait_until(lambda: events(tmp_path / "run", EventType.RENDEZVOUS_CLOSED), 10, "the node to close the job")
    wait_until(lambda: not coordinator.snapshot()["workers"]["by_state"].get("running"), 10,
               "the workers' connections to end")
    coordinator.stop()


# ------------------------------------------------------------------ a real job
def test_a_torchrun_job_shows_every_ranks_step_and_epoch_and_the_live_view_equals_its_replay(tmp_path):
    coordinator = start(tmp_path)
    job = agent(tmp_path, coordinator, WORKER, JOB_VIEW_MODE="steps")
    started = time.monotonic()
    try:
        def in_second_epoch() -> list[dict[str, Any]] | None:
            found = rows(coordinator, "workers", "workers")
            return found if len(found) == 2 and all((r["epoch"] or 0) >= 1 for r in found) else None

        ranks = wait_until(in_second_epoch, JOB_S, "both ranks' step reports in their second epoch")
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["state"] == "running" for r in ranks)
        assert all(r["step"] > 8 and r["dataset"] == "numbers" and r["samples_per_s"] > 0 for r in ranks), ranks
        progress = coordinator.snapshot()["workers"]["progress"]
        assert progress["reporting"] == 2 and progress["epoch"]["min"] >= 1
        text = render_status(fetch_status(coordinator.endpoint))
        assert "ranks (2): 2 running of world size 2, step " in text and ", epoch " in text, text
        finish(tmp_path, job, coordinator)
        ran_s = time.monotonic() - started
    finally:
        job.close()
        coordinator.stop()
    run_dir = tmp_path / "run"
    live = comparable(coordinator.observed.view)
    replayed = comparable(JobView.replay(run_dir))
    assert live == replayed
    snapshot = replayed[0]
    assert snapshot["workers"]["by_state"] == {"stopped": 2} and snapshot["run"]["shutdown"] is not None
    last = {r["rank"]: r for r in replayed[1]["workers/workers"]["items"]}
    assert {rank: (r["state"], r["epoch"] >= 1) for rank, r in last.items()} == {0: ("stopped", True),
                                                                                  1: ("stopped", True)}
    state = json.loads((run_dir / STATE_FILE).read_text())  # what the coordinator wrote last: the view
    assert {key: state[key] for key in snapshot} == snapshot
    # a barrier named per step: one row and a bounded number of events and TensorBoard tags
    names = [b["name"] for b in snapshot["barriers"]["names"]]
    assert names[VARIANTS:] == ["step-#"] and len(names) == VARIANTS + 1
    calls = sum(b["completions"] for b in snapshot["barriers"]["names"])
    reported = events(run_dir, EventType.BARRIER)  # the first calls of the first names, then one a second
    assert calls >= 16 and len(reported) <= VARIANTS + ran_s + 1, (calls, len(reported), ran_s)
    tags = tensorboard_tags(run_dir)
    assert len([t for t in tags if t.startswith("barrier/")]) == VARIANTS + 1, tags


def tensorboard_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return sorted(accumulator.Tags()["scalars"])


def test_a_plain_torchrun_script_shows_its_workers_pids_cpu_and_rss_through_its_agent(tmp_path):
    coordinator = start(tmp_path)
    job = agent(tmp_path, coordinator, PLAIN)
    try:
        def busy_workers() -> list[dict[str, Any]] | None:
            machines = rows(coordinator, "machines", "machines")
            workers = [w for m in machines for w in m["workers"]]
            busy = [w for w in workers if (w.get("cpu_percent") or 0) > 5 and (w.get("rss") or 0) > 60 * 2**20]
            return workers if len(machines) == 1 and len(busy) == 2 else None

        workers = wait_until(busy_workers, JOB_S, "two busy worker processes of 64 MB in the view")
        children = {p.pid for p in psutil.Process(job.proc.pid).children()}
        assert {w["pid"] for w in workers} <= children  # the agent's own children, found by its handler
        assert sorted(w["local_rank"] for w in workers) == [0, 1] and sorted(w["rank"] for w in workers) == [0, 1]
        snapshot = coordinator.snapshot()
        assert snapshot["workers"]["total"] == 0  # the script never said hello: no rank row, yet its processes
        assert snapshot["machines"]["workers"]["total"] == 2 and snapshot["machines"]["workers"]["rss"] > 120 * 2**20
        text = render_status(fetch_status(coordinator.endpoint))
        assert "worker processes on 1 node(s)" in text and all(str(w["pid"]) in text for w in workers)
        finish(tmp_path, job, coordinator)
    finally:
        job.close()
        coordinator.stop()
    live = comparable(coordinator.observed.view)
    assert live == comparable(JobView.replay(tmp_path / "run"))
    [machine] = live[1]["machines/machines"]["items"]
    assert machine["state"] == "gone" and sorted(w["state"] for w in machine["workers"]) == ["exited", "exited"]
    assert all(w["exit_code"] in (0, None) for w in machine["workers"])  # None: the agent reaped it first
    logged = events(tmp_path / "run", EventType.NODE_STATUS)
    assert 2 <= len(logged) <= 8, [len(e["workers"]) for e in logged]  # first, workers came and went, last word
    assert not events(tmp_path / "run", EventType.NODE_STATS)  # live only


def test_in_lock_step_a_rank_with_a_slow_loader_is_flagged_on_its_data_wait_and_clears(tmp_path):
    """All-reduce every step: the ranks' step times are equal, rank 1 waits for its data."""
    coordinator = start(tmp_path)
    job = agent(tmp_path, coordinator, WORKER, JOB_VIEW_MODE="slow_data")
    run_dir = tmp_path / "run"
    try:
        [alert] = wait_until(lambda: events(run_dir, EventType.RANK_STRAGGLING), JOB_S, "rank 1 flagged")
        assert alert["rank"] == 1 and alert["measure"] == "data_wait_ms" and alert["value_ms"] >= 60, alert
        assert rows(coordinator, "workers", "workers")[1]["alerts"][EventType.RANK_STRAGGLING]["measure"] == \
            "data_wait_ms"  # what the Tasks page says: it waits for its data
        (tmp_path / "faster").touch()
        [recovered] = wait_until(lambda: events(run_dir, EventType.RANK_RECOVERED), JOB_S, "rank 1 to recover")
        assert recovered["rank"] == 1 and recovered["was"] == EventType.RANK_STRAGGLING
        finish(tmp_path, job, coordinator)
    finally:
        job.close()
        coordinator.stop()
    assert len(events(run_dir, EventType.RANK_STRAGGLING)) == 1


def test_a_slow_rank_is_flagged_as_a_straggler_and_clears_when_it_speeds_up(tmp_path):
    """The workers step without collectives, so each rank's step time is its own (in lock-step
    DDP every rank's step time is the slowest one's and no rank stands out)."""
    coordinator = start(tmp_path)
    job = agent(tmp_path, coordinator, WORKER, JOB_VIEW_MODE="straggle")
    run_dir = tmp_path / "run"
    try:
        [alert] = wait_until(lambda: events(run_dir, EventType.RANK_STRAGGLING), JOB_S, "rank 1 flagged")
        # 80 ms against 20 ms is 4; a loaded box's overhead on every step pulls the ratio toward 1,
        # and anything at or below the threshold (1.5) is no straggler
        assert alert["rank"] == 1 and 1.5 < alert["ratio"] < 6 and alert["reports"] == 5, alert
        row = rows(coordinator, "workers", "workers")[1]
        assert row["alerts"][EventType.RANK_STRAGGLING]["ratio"] == alert["ratio"]
        assert f"rank_straggling x{alert['ratio']}" in render_status(fetch_status(coordinator.endpoint))
        (tmp_path / "faster").touch()
        [recovered] = wait_until(lambda: events(run_dir, EventType.RANK_RECOVERED), JOB_S, "rank 1 to recover")
        assert recovered["rank"] == 1 and recovered["was"] == EventType.RANK_STRAGGLING
        assert rows(coordinator, "workers", "workers")[1]["alerts"] == {}
        finish(tmp_path, job, coordinator)
    finally:
        job.close()
        coordinator.stop()
    assert len(events(run_dir, EventType.RANK_STRAGGLING)) == 1 and not events(run_dir, EventType.RANK_STALLED)


def test_a_rank_that_stops_stepping_is_stalled_and_its_stacks_are_taken(tmp_path):
    coordinator = start(tmp_path, AlertSettings(stall_floor_s=2.0))
    job = agent(tmp_path, coordinator, WORKER, JOB_VIEW_MODE="stall")
    run_dir = tmp_path / "run"
    try:
        [stalled] = wait_until(lambda: events(run_dir, EventType.RANK_STALLED), JOB_S, "rank 1 stalled")
        assert stalled["rank"] == 1 and stalled["step"] == 20 and stalled["threshold_s"] == 2.0
        [dump] = wait_until(lambda: events(run_dir, EventType.STACKS_DUMPED), 10, "the stalled rank's stacks")
        assert dump["reason"] == EventType.RANK_STALLED and dump["ranks"] == [1] and dump["answered"] == [1]
        assert "stuck_waiting" in (run_dir / dump["path"]).read_text()
        assert rows(coordinator, "workers", "workers")[1]["alerts"][EventType.RANK_STALLED]["step"] == 20
        finish(tmp_path, job, coordinator)
    finally:
        job.close()
        coordinator.stop()


# ------------------------------------------------------------------ node reports
def test_a_node_reports_its_machine_stamped_with_its_own_id_and_nothing_else(coordinator):
    node = node_client(coordinator.endpoint, "n0")
    try:
        sample = {"cpus": 2, "cpu_percent": 50.0, "workers": [{"pid": 7, "local_rank": 0, "state": "running",
                                                              "rss": 1000, "cpu_percent": 99.0}]}
        reply = node.request(Op.TELEMETRY, timeout=10, events=[
            {"type": EventType.NODE_STATUS, "node_id": "someone-else", **sample},
            {"type": EventType.STEP, "step": 5, "rank": 0},          # a worker's report
            {"type": EventType.ROUND_COMPLETED, "round": 9},         # a coordinator's decision
        ])
        assert (reply["accepted"], reply["refused"]) == (1, 2)
        [machine] = rows(coordinator, "machines", "machines")
        assert machine["node_id"] == "n0" and machine["workers"][0]["pid"] == 7
        refused = {e["refused_type"]: e for e in events(coordinator.config.run_dir, EventType.REPORT_REFUSED)}
        assert set(refused) == {"step", "round_completed"} and refused["step"]["node_id"] == "n0"
        worker = CoordinatorClient(coordinator.endpoint, role=Role.WORKER, run_id="job",
                                   hello={"info": {"rank": 0, "node_id": "n0", "round": form_round(node)}})
        worker.connect(timeout=5)
        assert worker.request(Op.TELEMETRY, events=[{"type": EventType.NODE_STATS, **sample}],
                              timeout=10)["refused"] == 1  # a node's report is no worker's to make
        worker.close()
    finally:
        node.close()


class _Sampler:
    """Samples with the workers the test sets."""

    def __init__(self) -> None:
        self.workers: list[dict[str, Any]] = [{"pid": 1, "state": "running"}]

    def sample(self, now: float) -> dict[str, Any]:
        return {"cpus": 1, "workers": [dict(w) for w in self.workers]}


def test_a_nodes_sample_is_logged_first_when_its_workers_change_every_interval_and_as_its_last_word():
    sent: list[EventType] = []
    connected = [True]

    def send(kind: EventType, fields: dict[str, Any]) -> bool:
        if connected[0]:
            sent.append(kind)
        return connected[0]

    sampler = _Sampler()
    thread = NodeStatsThread(send, sampler=sampler, interval=0.01, log_interval=3600)  # type: ignore[arg-type]
    for workers in ([{"pid": 1, "state": "running"}, {"pid": 2, "state": "sleeping"}],  # a new process
                    [{"pid": 1, "state": "sleeping"}, {"pid": 2, "state": "exited", "exit_code": None}],
                    [{"pid": 1, "state": "running"}, {"pid": 2, "state": "exited", "exit_code": 3}]):
        thread.report()
        thread.report()  # the same workers (a state such as sleeping/running is no change)
        sampler.workers = workers
    thread.report()  # the exit code was learnt
    thread.stop(last_word=True)
    assert sent == [EventType.NODE_STATUS, EventType.NODE_STATS] * 3 + [EventType.NODE_STATUS] * 2
    every = NodeStatsThread(send, sampler=sampler, log_interval=0.0)  # type: ignore[arg-type]
    sent.clear()
    every.report()
    every.report()
    assert sent == [EventType.NODE_STATUS] * 2
    again = NodeStatsThread(send, sampler=sampler, log_interval=3600)  # type: ignore[arg-type]
    connected[0] = False  # reconnecting: the first sample is not sent, so the next one is logged
    again.report()
    connected[0] = True
    sent.clear()
    again.report()
    again.report()
    assert sent == [EventType.NODE_STATUS, EventType.NODE_STATS]


def test_the_machines_part_goes_back_to_the_last_logged_sample_when_the_node_goes_and_stays_bounded():
    live, replay, logged = live_and_replayed_views()

    many = [{"pid": pid, "state": "running", "rss": 10, "junk": "x" * 100} for pid in range(MAX_WORKERS + 50)]
    logged({"type": EventType.NODE_STATUS, "ts": 1.0, "node_id": "a", "cpu_percent": 10.0, "workers": many})
    live.apply({"type": EventType.NODE_STATS, "ts": 2.0, "node_id": "a", "cpu_percent": 90.0, "workers": []})
    live.apply({"type": EventType.NODE_STATS, "ts": 2.0, "node_id": 5})  # malformed: not a node's
    assert live.snapshot()["machines"]["cpu_percent"]["max"] == 90.0
    assert live.page("machines", "machines") != replay.page("machines", "machines")
    logged({"type": EventType.NODE_LEFT, "ts": 3.0, "node": "a"})
    assert live.page("machines", "machines") == replay.page("machines", "machines")
    assert live.snapshot()["machines"] == replay.snapshot()["machines"]
    [row] = live.page("machines", "machines")["items"]
    assert row["state"] == "gone" and row["cpu_percent"] == 10.0 and len(row["workers"]) == MAX_WORKERS
    assert "junk" not in row["workers"][0]
    logged({"type": EventType.NODE_STATUS, "ts": 4.0, "node_id": "b", "cpu_percent": 1.0})
    live.apply({"type": EventType.NODE_STATS, "ts": 5.0, "node_id": "c", "cpu_percent": 1.0})  # never logged
    logged({"type": EventType.COORDINATOR_RESTARTED, "ts": 6.0, "clean": False})  # b and c went with it
    assert [(r["node_id"], r["state"]) for r in live.page("machines", "machines")["items"]] == [("a", "gone"),
                                                                                              ("b", "gone")]
    assert live.page("machines", "machines") == replay.page("machines", "machines")
    assert sum(live.points("machines", "worker", "rss")["count"]) == MAX_WORKERS


def test_reports_of_odd_values_fail_no_part_and_a_coordinator_restarted_on_the_record_starts(tmp_path):
    first = start(tmp_path)
    node = node_client(first.endpoint, "n0")
    worker = CoordinatorClient(first.endpoint, role=Role.WORKER, run_id="job",
                               hello={"info": {"rank": 0, "node_id": "n0", "round": form_round(node)}})
    worker.connect(timeout=5)
    saving = {"type": EventType.CHECKPOINT_SAVED, "step": 10, "bytes": 1, "stall_s": 0.1, "write_s": 1.0, "mb_s": 1.0}
    odd = [{"type": EventType.CHECKPOINT_FAILED, "step": {"not": "a step"}, "stage": "write", "error": "x"},
           {"type": EventType.CHECKPOINT_RESTORED, "step": 10, "read_s": [1]}]
    assert worker.request(Op.TELEMETRY, events=[saving, *odd], timeout=10)["accepted"] == 3  # well-formed reports
    assert first.snapshot()["failures"] == {} and first.snapshot()["checkpoints"]["problems_total"] == 1
    worker.close()
    node.close()
    first.stop()
    again = start(tmp_path)  # replays the record, odd reports included
    try:
        snapshot = again.snapshot()
        assert snapshot["failures"] == {} and snapshot["run"]["incarnations"] == 2
        assert (snapshot["checkpoints"]["problems_total"], snapshot["checkpoints"]["restores_total"]) == (1, 1)
    finally:
        again.stop()


# ------------------------------------------------------------------ status and its op
def test_the_status_op_serves_pages_of_the_view_and_names_a_bad_request(coordinator):
    node = node_client(coordinator.endpoint, "n0")
    observer = CoordinatorClient(coordinator.endpoint, role=Role.OBSERVER)
    observer.connect(timeout=5)
    try:
        form_round(node)
        reply = observer.request(Op.STATUS, pages=[{"part": "rendezvous", "kind": "nodes", "limit": 5}], timeout=10)
        assert [n["node_id"] for n in reply["pages"]["rendezvous/nodes"]["items"]] == ["n0"]
        assert reply["state"]["rendezvous"]["current"]["round"] == 1 and "membership" not in reply["state"]
        with pytest.raises(ProtocolError, match=r"page: expected one of .*workers/workers.*; got workers/nope"):
            observer.request(Op.STATUS, pages=[{"part": "workers", "kind": "nope"}], timeout=10)
        with pytest.raises(ProtocolError, match=r"pages: expected an offset >= 0 and a limit of 0..1000"):
            observer.request(Op.STATUS, pages=[{"part": "workers", "kind": "workers", "limit": 10**6}], timeout=10)
        with pytest.raises(ProtocolError, match=r"pages: expected a list"):
            observer.request(Op.STATUS, pages="workers", timeout=10)
    finally:
        observer.close()
        node.close()


def test_status_follow_prints_the_events_as_they_are_recorded(coordinator):
    lines: list[str] = []
    follower = threading.Thread(target=follow_events, args=(coordinator.endpoint, None, 0, lines.append))
    follower.start()
    node = node_client(coordinator.endpoint, "n0")
    form_round(node)
    wait_until(lambda: any("round_completed" in line for line in lines), 10, "the round in the followed lines")
    node.close()
    coordinator.stop()
    follower.join(10)
    assert not follower.is_alive()
    assert any("coordinator_started" in line for line in lines) and any("shutdown" in line for line in lines)


# ------------------------------------------------------------------ bounded names, no features in the server
def test_tensorboard_tags_of_names_that_change_every_step_stay_bounded(tmp_path):
    """One run that named a barrier per step had 1,171 TensorBoard tags; the same names now make
    VARIANTS + 1 tags per family, whatever the run length."""
    writer = MetricsWriter(tmp_path, health=WriteHealth(tmp_path))
    for step in range(2000):
        writer.observe({"type": EventType.BARRIER, "ts": time.time(), "name": f"step-{step}", "call": 1,
                        "latency_us": 10.0, "p50_us": 10.0, "max_us": 10.0})
        writer.observe({"type": EventType.METRIC, "ts": time.time(), "name": f"loss/{step}", "value": 1.0,
                        "step": step})
    writer.observe({"type": EventType.METRIC, "ts": time.time(), "name": "train/loss", "value": 1.0, "step": 1})
    writer.close()
    tags = tensorboard_tags(tmp_path)
    assert len(tags) == 2 * (VARIANTS + 1) + 1, tags
    assert "barrier/step-#/p50_us" in tags and "loss/#" in tags and "train/loss" in tags


def test_the_coordinator_knows_no_feature_and_pushes_what_the_contract_does_not_log():
    source = (REPO / "torchrt" / "coordinator" / "server.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m and m.split(".")[1:2] in (["data"], ["checkpoint"])}, imported
    assert "checkpoint_" not in source and "dataset" not in source
    assert LIVE_PUSH[EventType.STEP] is Push.STEP and LIVE_PUSH[EventType.NODE_STATS] is Push.NODE_STATS
    assert EventType.STEP_PROGRESS not in LIVE_PUSH and EventType.NODE_STATUS not in LIVE_PUSH
    assert NODE_REPORTS == {EventType.NODE_STATS, EventType.NODE_STATUS}
