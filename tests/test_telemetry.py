"""Telemetry: torchrt.step's window reports, the reporter's window sources, the node sampler against
real child processes, the workers' progress in the job view, and a real torchrun job's step record.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest
import torch

import torchrt
from torchrt.contract import EventType, Op, Role
from torchrt.coordinator import CoordinatorClient
from torchrt.data import DataConfigError, ShardedPipeline
from torchrt.errors import CoordinatorUnavailableError
from torchrt.data.events import RegistryFold
from torchrt.data.registry import build_pipeline
from torchrt.data.spec import DataSpec
from torchrt.data.sources import ArraySource
from torchrt.telemetry import Reporter, coordinator_reporter
from torchrt.telemetry import steps as steps_module
from torchrt.telemetry.node import GpuProbe, NodeSampler, NodeStatsThread, agent_workers
from torchrt.telemetry.steps import MAX_SCALARS, StepMeter
from torchrt.view import JobView

from tests.helpers import ManualClock, events, form_round, free_port, live_and_replayed_views, node_client, wait_until


def meter(clock: ManualClock, **kw: Any) -> StepMeter:
    return StepMeter(clock=clock, wall=lambda: 1_700_000_000.0 + clock.now, **kw)


# ------------------------------------------------------------ torchrt.step
def test_a_window_of_steps_is_one_report_with_step_time_rate_waits_and_the_last_loss():
    clock = ManualClock(0.0)
    m = meter(clock)
    for i in range(101):  # the first call only starts the clock: 100 timed steps of 10 ms
        m.step(loss=2.0 - i / 100, samples=32, accuracy=i / 100)
        m.note_wait("barrier", 0.002)
        clock.now += 0.010 if i % 10 else 0.030  # every tenth step is slow
    [report] = m.window()
    assert report["type"] == EventType.STEP_PROGRESS  # the first report of a rank is logged
    assert report["step"] == 101 and report["steps"] == 101
    assert math.isclose(report["step_ms"], 12.0, abs_tol=0.01) and math.isclose(report["step_max_ms"], 30.0)
    assert math.isclose(report["barrier_ms"], 2.0, abs_tol=0.01) and report["data_wait_ms"] == 0.0
    assert math.isclose(report["busy_ms"], 10.0, abs_tol=0.02)
    # the rate is the timed steps' samples over their time: the first call's samples came before the clock
    assert report["samples"] == 101 * 32 and math.isclose(report["samples_per_s"], 100 * 32 / 1.2, rel_tol=1e-4)
    assert report["loss"] == 1.0 and report["scalars"] == {"accuracy": 1.0}
    assert m.window() == []  # no step since: no report


def test_a_new_process_first_window_reports_its_true_rate_not_a_spike():
    # The Activity page's samples/s jumped to twice the job's rate after every restart: a new process's
    # first window counted its first step's samples over the time of the steps after it alone.
    clock = ManualClock(0.0)
    m = meter(clock)
    for _ in range(3):  # 0.5 s steps of 8 samples: 16 samples/s
        m.step(samples=8)
        clock.now += 0.5
    [first] = m.window()
    assert (first["samples"], first["samples_per_s"]) == (24, 16.0)
    for _ in range(2):
        m.step(samples=8)
        clock.now += 0.5
    [second] = m.window()
    assert (second["samples"], second["samples_per_s"]) == (16, 16.0)


def test_reports_are_logged_every_ten_seconds_on_an_epoch_change_and_as_the_last_word():
    clock = ManualClock(0.0)
    m = meter(clock)
    kinds = []
    for second in range(25):
        for _ in range(4):
            m.step(samples=1)
            m.note_data("digits", 1 if second >= 22 else 0, second * 4, 0.0, samples=second * 4, session="s")
            clock.now += 0.25
        kinds.append(m.window()[0]["type"])
    logged = [i for i, kind in enumerate(kinds) if kind == EventType.STEP_PROGRESS]
    assert logged == [0, 10, 20, 22]  # first, every 10 s, epoch 0 -> 1
    last_live = m._last  # the last report, live only
    assert last_live is not None and last_live["step"] == 100
    [last_word] = m.window(final=True)
    assert last_word["type"] == EventType.STEP_PROGRESS
    assert {k: v for k, v in last_word.items() if k not in ("type", "ts")} == \
        {k: v for k, v in last_live.items() if k not in ("type", "ts")}
    assert last_word["dataset"] == "digits" and last_word["epoch"] == 1
    assert m.window(final=True) == []  # said once


def test_a_tensor_loss_is_read_in_the_flush_not_in_the_step_and_keeps_no_graph():
    clock = ManualClock(0.0)
    m = meter(clock)
    w = torch.ones(3, requires_grad=True)
    loss = (w * 2).sum()
    m.step(loss=loss)
    kept = m._window.loss
    assert isinstance(kept, torch.Tensor) and kept.grad_fn is None and not kept.requires_grad
    clock.now += 0.01
    m.step(loss=torch.tensor(float("nan")), samples=torch.tensor(8), lr=torch.tensor([0.1]), bad="x")
    [report] = m.window()
    assert "loss" not in report and report["not_numbers"] == ["loss", "bad"]
    assert report["samples"] == 8 and math.isclose(report["scalars"]["lr"], 0.1, rel_tol=1e-6)


def test_scalar_names_per_window_are_bounded():
    m = meter(ManualClock(0.0))
    m.step(**{f"s{i}": float(i) for i in range(MAX_SCALARS + 8)})
    [report] = m.window()
    assert len(report["scalars"]) == MAX_SCALARS and report["scalars_dropped"] == 8


def test_a_restored_checkpoint_sets_the_step_number():
    m = meter(ManualClock(0.0))
    m.note_restored(500)
    m.step()
    assert m.window()[0]["step"] == 501


def test_the_reporter_flush_takes_the_step_window_and_its_close_says_the_last_word():
    steps_module._meter.window(final=True)  # whatever earlier tests left in the process-wide meter
    steps_module._meter.window(final=True)
    got: list[dict[str, Any]] = []
    reporter = Reporter(got.extend, flush_interval=60)
    try:
        for _ in range(3):
            torchrt.step(loss=0.5, samples=4)
        reporter.flush()
        assert [e["type"] for e in got] == [EventType.STEP_PROGRESS] and got[0]["steps"] == 3
        torchrt.step(loss=0.25, samples=4)
        reporter.flush()
        assert got[-1]["type"] == EventType.STEP and got[-1]["loss"] == 0.25
    finally:
        reporter.close()
    assert got[-1]["type"] == EventType.STEP_PROGRESS and got[-1]["loss"] == 0.25
    json.dumps(got)  # what the sink gets is JSON as it is


def test_a_reporters_last_flush_goes_to_confirm_even_when_it_has_nothing_to_say():
    sent: list[list[dict[str, Any]]] = []
    confirmed: list[list[dict[str, Any]]] = []
    reporter = Reporter(sent.append, flush_interval=60, confirm=confirmed.append)
    reporter.emit(EventType.METRIC, name="loss", value=1.0, step=1)
    reporter.flush()
    reporter.close()
    assert [[e["name"] for e in batch] for batch in sent] == [["loss"]]
    assert confirmed == [[]]


class SilentCoordinator:
    """A channel to a coordinator that takes what is sent and answers no request (it hangs)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def send(self, op: str, **fields: Any) -> None:
        self.calls.append("send")

    def request(self, op: str | None = None, *, timeout: float | None = 30.0, **fields: Any) -> Any:
        self.calls.append("request")
        if len(self.calls) > 20:
            return {"ok": True}  # it answers again
        raise CoordinatorUnavailableError(f"the coordinator did not answer {op!r} within {timeout:g}s")


def test_at_most_ten_batches_go_unanswered_and_after_a_missing_answer_each_waits_for_one(caplog):
    """A coordinator that stops reading (hung, not gone) must not fill the worker's socket buffer
    until a send blocks for good: every tenth batch is a request, and while requests go unanswered
    every flush is one (waiting, as each did before batches went without a reply)."""
    channel = SilentCoordinator()
    reporter = coordinator_reporter(channel, flush_interval=60)
    try:
        for _ in range(25):
            reporter.emit(EventType.METRIC, name="loss", value=1.0, step=1)
            reporter.flush()
    finally:
        reporter.close()
    assert channel.calls == ["send"] * 9 + ["request"] * 12 + ["send"] * 4 + ["request"]  # the last: close's
    assert "could not deliver" in caplog.text


def test_a_workers_batches_do_not_wait_for_the_coordinator_and_its_last_word_is_taken_before_close(coordinator):
    """torchrt.init's reporter (coordinator_reporter over a real worker connection): a flush sends its
    batch and returns while the coordinator's loop is held busy (it used to wait for a reply a
    thousand times a second at a thousand ranks); the flush at close is answered only once the
    coordinator took every batch before it, so the rank's last word is in the record and the view
    when close returns, before the connection ends and the coordinator records worker_stopped."""
    steps_module._meter.window(final=True)  # whatever earlier tests left in the process-wide meter
    steps_module._meter.window(final=True)
    steps_module._meter.note_restored(0)  # and its step count: this test's steps are 1, 2, ...
    node = node_client(coordinator.endpoint)
    client = CoordinatorClient(coordinator.endpoint, role=Role.WORKER, run_id="job", hello={"info": {
        "rank": 0, "local_rank": 0, "world_size": 1, "local_world_size": 1, "node_id": "n0",
        "round": form_round(node), "pid": os.getpid(), "backend": "gloo"}})
    client.connect(timeout=10)
    reporter = coordinator_reporter(client, flush_interval=60)

    def first_row() -> dict[str, Any]:
        return coordinator.read_view(lambda view: view.page("workers", "workers")["items"][0])

    held, release = threading.Event(), threading.Event()
    busy = threading.Thread(target=coordinator.read_view, args=(lambda view: held.set() or release.wait(30),))
    try:
        busy.start()
        assert held.wait(10), "the coordinator's loop did not run the blocking read"
        for _ in range(3):
            torchrt.step(loss=0.5, samples=4)
        started = time.monotonic()
        reporter.flush()
        waited = time.monotonic() - started
        assert waited < 2.0, f"a flush waited {waited:.1f} s for a coordinator that was busy"
        release.set()
        busy.join(10)
        wait_until(lambda: first_row()["step"] == 3, timeout=10, what="the batch sent while the loop was busy")
        torchrt.step(loss=0.25, samples=4)
        reporter.close()  # its last word: step 4, logged, taken by the coordinator before close returns
        row = first_row()
        assert (row["state"], row["step"], row["loss"]) == ("running", 4, 0.25)
        logged = [e for e in coordinator.events.recent(0) if e["type"] == EventType.STEP_PROGRESS]
        assert (logged[-1]["step"], logged[-1]["loss"]) == (4, 0.25)
    finally:
        release.set()
        client.close()
        node.close()
    wait_until(lambda: first_row()["state"] == "stopped", timeout=10, what="the worker's stop in the view")
    assert first_row()["step"] == 4


def test_the_data_pipeline_hands_epoch_position_and_wait_to_the_step_report():
    steps_module._meter.window(final=True)
    n = 64
    source = ArraySource({"x": torch.arange(n, dtype=torch.float32).reshape(n, 1)}, name="numbers")
    pipeline = ShardedPipeline(source, batch_size=8, workers=0, shuffle=False, preview_interval=None)
    for _batch in pipeline:
        torchrt.step(samples=8)
    [report] = steps_module._meter.window()
    assert (report["dataset"], report["epoch"], report["position"]) == ("numbers", 0, 64)
    assert report["data_wait_ms"] > 0.0


def test_a_wait_the_loop_notes_on_a_dataset_counts_in_its_timing_as_in_the_step_report(recorder):
    # The demo's slow rank slept in its loop and told only the step meter: Tasks said it waited 300 ms a
    # step for data while the Datasets page said the dataset's ranks waited 0%.
    steps_module._meter.window(final=True)
    source = ArraySource({"x": torch.zeros(32, 1)}, name="late")
    pipeline = ShardedPipeline(source, batch_size=8, workers=0, shuffle=False, preview_interval=None)
    for _batch in pipeline:
        pipeline.note_wait(0.05)  # counted, not slept: the loop's own sleep is what it reports
        torchrt.step(samples=8)
    [report] = steps_module._meter.window()
    assert 50.0 <= report["data_wait_ms"] < 60.0
    [timing] = recorder.of(EventType.DATA_TIMING)
    assert (timing["dataset"], timing["batches"]) == ("late", 4) and 0.2 <= timing["wait_s"] < 0.24
    with pytest.raises(DataConfigError, match=r"dataset 'late'.*a wait cannot be negative, got -1"):
        pipeline.note_wait(-1)


def test_the_step_report_carries_the_ranks_count_so_consumed_keeps_up_with_the_position(recorder):
    # The Datasets page read "consumed this epoch 928" beside "position 1,248": the position moved
    # with each step report (every second), the count only with data_progress (every 5 s).
    steps_module._meter.window(final=True)
    spec = DataSpec(name="counted", kind="synthetic", options={"size": 80, "shape": [1]}, batch_size=8, workers=0,
                    shuffle=False, preview_interval=None, report_interval=5.0)
    pipeline = build_pipeline(spec, 0, 1, clock=ManualClock())  # its clock stands still: no data_progress
    batches = iter(pipeline)
    for _ in range(3):
        next(batches)
        torchrt.step(samples=8)
    [report] = steps_module._meter.window()
    assert (report["dataset"], report["position"], report["data_samples"]) == ("counted", 24, 24)
    assert recorder.of(EventType.DATA_PROGRESS) == []  # the step report alone counts
    fold = RegistryFold()
    for event in [*recorder.events, {**report, "rank": 0}]:  # the coordinator stamps the rank on a report
        fold.apply(event)
    summary = fold.snapshot()["counted"]
    assert (summary["position"], summary["samples_in_epoch"]) == (24, 24)
    late = {"type": EventType.DATA_PROGRESS, "dataset": "counted", "rank": 0, "epoch": 0, "position": 8,
            "samples": 8, "session": report["data_session"]}
    fold.apply(late)  # a progress report from before that step report, folded after it
    assert fold.snapshot()["counted"]["samples_in_epoch"] == 24
    pipeline.close()


def test_a_checkpoint_save_hands_its_stall_to_the_step_report(tmp_path, recorder):
    from torchrt.checkpoint import CheckpointManager

    steps_module._meter.window(final=True)
    manager = CheckpointManager(tmp_path, keep=1)
    try:
        torchrt.step()
        handle = manager.save({"w": torch.ones(1 << 16)}, step=1)
        torchrt.step()
        manager.wait(60)
    finally:
        manager.close()
    [report] = steps_module._meter.window()
    assert handle.stall_s > 0 and report["checkpoint_ms"] == round(handle.stall_s * 1000 / 2, 3)


def test_one_step_costs_microseconds():
    m = StepMeter()
    loss = torch.tensor(0.5)
    started = time.perf_counter()
    for _ in range(20_000):
        m.step(loss=loss, samples=32)
    per_step_us = (time.perf_counter() - started) / 20_000 * 1e6
    print(f"torchrt.step: {per_step_us:.2f} us per call ({per_step_us / 100:.3f}% of a 10 ms step)")
    assert m.window()[0]["steps"] == 20_000


# ------------------------------------------------------------ the node sampler
BURN = "import sys\nsys.stdout.write('up\\n'); sys.stdout.flush()\nwhile True: pass\n"
HOLD = ("import sys\nblock = bytearray(200 * 1024 * 1024)\nfor i in range(0, len(block), 4096): block[i] = 1\n"
        "sys.stdout.write('up\\n'); sys.stdout.flush()\nsys.exit(int(sys.stdin.readline() or 0))\n")


@pytest.fixture
def children():
    started: list[subprocess.Popen] = []

    def start(code: str, local_rank: int | None) -> subprocess.Popen:
        env = dict(os.environ)
        if local_rank is not None:  # as torchrun starts a worker
            env.update(LOCAL_RANK=str(local_rank), RANK=str(10 + local_rank), TORCHELASTIC_RUN_ID="t")
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "up\n"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_sampler_shows_each_worker_process_cpu_and_rss_and_the_exit_code_of_one_that_ended(children):
    burner, holder = children(BURN, 0), children(HOLD, 1)
    children(HOLD, None)  # a child of the agent that is not a torchrun worker
    sampler = NodeSampler(gpu=GpuProbe())
    clock = [time.monotonic()]

    def sample() -> dict[str, Any]:
        clock[0] = time.monotonic()
        return sampler.sample(clock[0])

    first = sample()
    assert {w["pid"] for w in first["workers"]} == {burner.pid, holder.pid}
    assert "cpu_percent" not in first  # rates need a previous sample

    def busy() -> dict[str, Any] | None:
        got = sample()
        rows = {w["pid"]: w for w in got["workers"]}
        return got if (rows[burner.pid]["cpu_percent"] or 0) > 30 else None  # 2 shared cores

    stats = wait_until(busy, timeout=20, what="the burning child's CPU to show", interval=0.3)
    rows = {w["pid"]: w for w in stats["workers"]}
    assert rows[burner.pid]["local_rank"] == 0 and rows[burner.pid]["rank"] == 10
    assert rows[holder.pid]["rss"] > 150 * 1024 * 1024 and rows[holder.pid]["cpu_percent"] < 10
    assert rows[burner.pid]["state"] in ("running", "sleeping") and "exit_code" not in rows[burner.pid]
    assert 0 <= stats["cpu_percent"] <= 100 and stats["mem_total"] > stats["mem_used"] > 0
    assert stats["net_recv_bps"] >= 0 and stats["cpus"] == psutil.cpu_count()

    holder.stdin.write("3\n")
    holder.stdin.flush()
    wait_until(lambda: psutil.Process(holder.pid).status() == psutil.STATUS_ZOMBIE, timeout=10,
               what="the child to exit")
    exited = {w["pid"]: w for w in sample()["workers"]}[holder.pid]
    assert exited["state"] == "exited" and exited["exit_code"] == 3
    assert holder.wait(5) == 3  # the sampler peeked: the parent still reaps its child's status
    assert {w["pid"]: w for w in sample()["workers"]}[holder.pid]["exit_code"] == 3  # kept once known
    sampler.keep_exited_s = 0.0
    time.sleep(0.01)
    assert [w["pid"] for w in sample()["workers"]] == [burner.pid]


def test_the_sampler_thread_sends_node_stats_until_stopped(children):
    children(BURN, 0)
    sent: list[tuple[EventType, dict[str, Any]]] = []
    thread = NodeStatsThread(lambda kind, fields: sent.append((kind, fields)) or True, interval=0.05).start()
    wait_until(lambda: len(sent) >= 3, timeout=10, what="three samples")
    thread.stop()
    count = len(sent)
    kinds = [kind for kind, _ in sent]  # the first sample is logged, the others (same workers) live only
    assert kinds[0] == EventType.NODE_STATUS and set(kinds[1:]) == {EventType.NODE_STATS}
    assert sent[-1][1]["workers"][0]["local_rank"] == 0 and "cpu_percent" in sent[-1][1]
    json.dumps([fields for _, fields in sent])
    time.sleep(0.15)
    assert len(sent) == count


def test_agent_workers_are_children_with_torchrun_environment(children):
    worker = children(HOLD, 0)
    children(HOLD, None)
    assert [p.pid for p in agent_workers()] == [worker.pid]


# ------------------------------------------------------------ the view
def _worker_events(rank: int, ts: float) -> dict[str, Any]:
    return {"type": EventType.WORKER_STARTED, "ts": ts, "rank": rank, "local_rank": rank % 8, "world_size": 1000,
            "local_world_size": 8, "node_id": f"n{rank // 8}", "round": 1, "pid": 1000 + rank, "backend": "gloo"}


def test_the_workers_rows_follow_each_ranks_reports_and_the_snapshot_summarises_a_thousand_ranks():
    view = JobView()
    seq = [0]

    def logged(event: dict[str, Any]) -> None:
        seq[0] += 1
        view.apply({**event, "seq": seq[0]})

    t = 1_700_000_000.0
    for rank in range(1000):
        logged(_worker_events(rank, t))
    for rank in range(1000):
        view.apply({"type": EventType.STEP, "ts": t + 1, "rank": rank, "step": 100 - (rank == 9) * 50, "steps": 10,
                    "step_ms": 500.0 if rank == 7 else 100.0 + rank / 1000, "samples_per_s": 320.0, "epoch": 0,
                    "position": 64_000, "dataset": "web", "loss": 2.5, "data_wait_ms": 1.0})
    logged({"type": EventType.RANK_STRAGGLING, "ts": t + 2, "rank": 7, "ratio": 5.0, "node_id": "n0"})
    started = time.perf_counter()
    text = json.dumps(view.snapshot())
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"snapshot with 1,000 ranks' progress: {len(text):,} bytes in {elapsed_ms:.1f} ms")
    assert len(text) < 64 * 1024
    workers = json.loads(text)["workers"]
    progress = workers["progress"]
    assert progress["reporting"] == 1000 and progress["step"] == {"min": 50, "max": 100}
    assert progress["samples_per_s"] == 320_000.0 and progress["slowest"][0] == {"rank": 7, "step_ms": 500.0}
    assert progress["behind"][0] == {"rank": 9, "step": 50} and progress["epoch"] == {"min": 0, "max": 0}
    assert workers["alerts"] == {"counts": {"rank_straggling": 1}, "ranks": [{"rank": 7, "alerts": ["rank_straggling"]}]}
    row = view.page("workers", "workers", offset=7, limit=1)["items"][0]
    assert row["step"] == 100 and row["step_ms"] == 500.0 and row["reported_at"] == t + 1
    assert row["alerts"]["rank_straggling"]["ratio"] == 5.0
    logged({"type": EventType.RANK_RECOVERED, "ts": t + 3, "rank": 7, "was": "rank_straggling"})
    assert view.page("workers", "workers", offset=7, limit=1)["items"][0]["alerts"] == {}
    points = view.points("workers", "steps", "samples_per_s")
    assert points["count"] == [1000] and points["max"] == [320.0]


def test_live_and_replayed_rows_agree_once_workers_stop_however_they_ended():
    """Live, the view sees every report; the record (a replay) only the logged ones. A worker that
    exits cleanly ends on a logged report; one that is killed ends on a live one, so its stopped row
    goes back to its last logged figures, which is what a replay holds."""
    live, replay, logged = live_and_replayed_views()

    clocks = {rank: ManualClock(0.0) for rank in range(2)}
    meters = {rank: meter(clock) for rank, clock in clocks.items()}
    for rank in range(2):
        logged(_worker_events(rank, 1.0))
    for second in range(15):
        for rank, m in meters.items():
            for _ in range(4):
                m.step(loss=float(second), samples=2)
                clocks[rank].now += 0.25
            for report in m.window():
                report = {**report, "rank": rank}
                (logged if report["type"] == EventType.STEP_PROGRESS else live.apply)(report)
    for report in meters[0].window(final=True):  # rank 0 exits cleanly: its last word is logged
        logged({**report, "rank": 0})
    live_rows = live.page("workers", "workers")["items"]
    assert live_rows[1]["step"] == 60 and replay.page("workers", "workers")["items"][1]["step"] == 44
    logged({"type": EventType.WORKER_STOPPED, "ts": 20.0, "rank": 0, "pid": 1000, "reason": "disconnected"})
    logged({"type": EventType.WORKER_STOPPED, "ts": 20.0, "rank": 1, "pid": 1001, "reason": "disconnected"})
    assert live.page("workers", "workers") == replay.page("workers", "workers")
    assert live.snapshot()["workers"] == replay.snapshot()["workers"]
    rows = live.page("workers", "workers")["items"]
    assert rows[0]["step"] == 60 and rows[0]["loss"] == 14.0  # its very last figures
    assert rows[1]["step"] == 44  # killed: what the record holds


# ------------------------------------------------------------ the alert thresholds a user sets
def test_stall_and_straggler_thresholds_from_a_yaml_config_reach_the_coordinators_rules(coordinator, tmp_path,
                                                                                      monkeypatch):
    """YAML -> torchrt run's torchrun command line -> torchrun's own parser -> the handler's strict
    options -> the job description of the node's hello -> the coordinator's rules: the job's record
    says what they are, and a rank that stops stepping is stalled after the configured 0.5 s."""
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.run import config_from_args, get_args_parser

    from launch.runner import torchrun_argv
    from torchrt.config import load_config
    from torchrt.rendezvous.options import RendezvousOptions

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else config_from_args sets it in this process
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "job.yaml").write_text("job: {name: job}\nentrypoint: {script: train.py}\n"
                                       "rendezvous: {straggler_ratio: 2, straggler_reports: 3, stall_timeout: 0.5}\n")
    argv = torchrun_argv(load_config(tmp_path / "job.yaml", ["rendezvous.recover_ratio=1.5"]))
    launch, _, _ = config_from_args(get_args_parser().parse_args(argv[3:]))
    options = RendezvousOptions.from_params(RendezvousParameters(
        backend=launch.rdzv_backend, endpoint=coordinator.endpoint, run_id=launch.run_id, min_nodes=1, max_nodes=1,
        **launch.rdzv_configs))  # exactly how torchrun builds them
    node = CoordinatorClient(coordinator.endpoint, role=Role.NODE, run_id="job", hello={
        "node_id": "n0", "job": options.job(1, 1), "info": {"hostname": "localhost", "addr": "127.0.0.1", "nproc": 1,
                                                           "device_kind": "cpu", "device_count": 0}})
    node.connect(timeout=10)
    client = CoordinatorClient(coordinator.endpoint, role=Role.WORKER, run_id="job", hello={"info": {
        "rank": 0, "local_rank": 0, "world_size": 1, "local_world_size": 1, "node_id": "n0",
        "round": form_round(node), "pid": os.getpid(), "backend": "gloo"}})
    try:
        client.connect(timeout=10)
        [configured] = [e for e in coordinator.events.recent(0) if e["type"] == EventType.JOB_CONFIGURED]
        alerts = configured["alerts"]
        assert (alerts["straggler_ratio"], alerts["straggler_reports"], alerts["recover_ratio"]) == (2.0, 3, 1.5)
        assert (alerts["stall_floor_s"], alerts["stall_factor"]) == (0.5, 10.0)  # one given, one the default
        assert coordinator.read_view(lambda view: view.snapshot()["run"]["settings"]["alerts"]) == alerts
        client.request(Op.TELEMETRY, events=[{"type": EventType.STEP_PROGRESS, "step": 1, "steps": 1,
                                              "step_ms": 10.0}], timeout=10)
        stalled = wait_until(lambda: [e for e in coordinator.events.recent(0) if e["type"] == EventType.RANK_STALLED],
                             timeout=10, what="rank 0 stalled after 0.5 s without a step")
        assert stalled[0]["rank"] == 0 and stalled[0]["threshold_s"] == 0.5
    finally:
        client.close()
        node.close()


def test_alert_thresholds_that_contradict_each_other_are_refused_naming_the_key(tmp_path):
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from torchrt.config import ConfigError, load_config
    from torchrt.errors import RendezvousConfigError
    from torchrt.rendezvous.options import RendezvousOptions

    def rdzv_conf(**conf: str) -> RendezvousOptions:
        return RendezvousOptions.from_params(RendezvousParameters(backend="torchrt", endpoint="127.0.0.1:1",
                                                                  run_id="r", min_nodes=1, max_nodes=1, **conf))

    assert rdzv_conf(stall_timeout="120", straggler_reports="10").job(1, 1)["alerts"] == \
        {"stall_floor_s": 120.0, "straggler_reports": 10}
    with pytest.raises(RendezvousConfigError, match=r"--rdzv-conf recover_ratio: expected a number <= "
                                                    r"straggler_ratio \(1.5\), got 1.6"):
        rdzv_conf(recover_ratio="1.6")
    with pytest.raises(RendezvousConfigError, match=r"--rdzv-conf stall_timeout: expected a number > 0"):
        rdzv_conf(stall_timeout="0")
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "job.yaml").write_text("job: {name: job}\nentrypoint: {script: train.py}\n"
                                       "rendezvous: {straggler_ratio: 1.2}\n")
    with pytest.raises(ConfigError, match=r"job.yaml: rendezvous.straggler_ratio: expected a number >= "
                                          r"rendezvous.recover_ratio \(1.25\), got 1.2"):
        load_config(tmp_path / "job.yaml")
    with pytest.raises(ConfigError, match=r"rendezvous.straggler_reports \(from --set\): expected an integer >= 1"):
        load_config(tmp_path / "job.yaml", ["rendezvous.straggler_ratio=3", "rendezvous.straggler_reports=0"])


# ------------------------------------------------------------ a real job
STEP_SCRIPT = """
import os, time
import torch, torch.distributed as dist
import torchrt
ctx = torchrt.init()
for step in range(40):
    value = torch.ones(1)
    dist.all_reduce(value)
    time.sleep(0.05)
    torchrt.step(loss=1.0 / (step + 1), samples=16, lr=0.1)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_torchrun_job_records_every_ranks_step_progress_and_a_replay_shows_their_last_step(tmp_path):
    from tests.agents import Agent

    script = tmp_path / "steps.py"
    script.write_text(STEP_SCRIPT)
    run_dir, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    agent = Agent(f"127.0.0.1:{free_port()}", "1", run_dir, results, script=script)
    try:
        assert agent.wait(120) == 0, agent.log()
    finally:
        agent.close()
    progress = events(run_dir, EventType.STEP_PROGRESS)
    assert {e["rank"] for e in progress} == {0, 1}
    last = {e["rank"]: e for e in progress}
    assert {rank: e["step"] for rank, e in last.items()} == {0: 40, 1: 40}
    assert last[0]["loss"] == 1.0 / 40 and last[0]["scalars"] == {"lr": 0.1} and last[0]["step_ms"] >= 50
    assert len(progress) <= 2 * 4  # bounded: first, every 10 s, last word (a job of ~2 s: 2 per rank)
    view = JobView.replay(run_dir)
    rows = view.page("workers", "workers")["items"]
    assert [(r["rank"], r["state"], r["step"]) for r in rows] == [(0, "stopped", 40), (1, "stopped", 40)]
