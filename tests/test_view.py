"""The job view (torchrt.view): folds, bounded series, persistence and replay, snapshot size.

Everything here is driven with explicit times (the view never reads the clock); the replay tests
write a real run directory with the coordinator's EventLog and the view's SeriesStore.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import resource
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from torchrt.checkpoint.fold import CheckpointFold
from torchrt.contract import EventType
from torchrt.coordinator.membership import Membership, RoundSettings
from torchrt.coordinator.run_dir import EventLog, WriteHealth
from torchrt.errors import FieldError
from torchrt.view import JobView, ViewQueryError
from torchrt.view.names import OTHER, VARIANTS, NameTable, normalise
from torchrt.view.series import LEVELS, POINTS_PER_SERIES, SERIES_MAX_BYTES, Series
from torchrt.view.store import SERIES_DIR, SNAPSHOT_FILE, SeriesFileError

T0 = 1_700_000_000.0  # a fixed Unix time for the simulated runs
DAY = 86_400


class Clock:
    """Events stamped like the coordinator's EventLog, with a time the test moves."""

    def __init__(self, view: JobView, now: float = T0) -> None:
        self.view, self.now, self.seq = view, now, 0
        self.log: list[dict[str, Any]] = []

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        event = {"seq": self.seq, "ts": self.now, "type": type, **fields}
        self.log.append(event)
        self.view.apply(event)
        return event


def series_bytes(series: Series) -> int:
    """What one series holds in memory: its object, its rings, their arrays and open buckets."""
    total = sys.getsizeof(series)
    for ring in series.rings:
        total += sys.getsizeof(ring) + sys.getsizeof(ring.data)
        if ring.open is not None:
            total += sys.getsizeof(ring.open) + sum(sys.getsizeof(v) for v in ring.open)
    return total


# ---------------------------------------------------------------------- imports
def test_the_view_loads_neither_the_coordinator_server_nor_the_checkpoint_writers():
    """The coordinator will import the view: the view must not import the server (a cycle) nor pull
    in the checkpoint layer's DTensor code (2 s of the coordinator's start-up) for its fold."""
    code = ("import sys, torchrt.view; heavy = [m for m in ('torchrt.coordinator.server', "
            "'torchrt.checkpoint.manager', 'torch.distributed.tensor', 'torchdata') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"torchrt.view imported {done.stdout.strip()} {done.stderr[-2000:]}"


# ----------------------------------------------------------------------- series
def test_a_point_holds_count_min_max_mean_last_and_coarser_levels_aggregate_honestly():
    series = Series()
    for t, value in ((100.1, 1.0), (100.5, 3.0), (101.2, 2.0), (109.9, 10.0), (110.0, 4.0)):
        series.add(t, value)
    series.close_before(112)
    fine = series.points(0)
    assert fine["t"] == [100, 101, 109, 110] and not fine["partial"]
    assert (fine["count"], fine["min"], fine["max"], fine["mean"], fine["last"]) == \
        ([2, 1, 1, 1], [1, 2, 10, 4], [3, 2, 10, 4], [2, 2, 10, 4], [3, 2, 10, 4])
    coarse = series.points(1)  # 10 s: [100, 110) closed, [110, 120) still open
    assert coarse["t"] == [100, 110] and coarse["partial"]
    assert (coarse["count"], coarse["min"], coarse["max"], coarse["last"]) == ([4, 1], [1, 4], [10, 4], [10, 4])
    assert coarse["mean"][0] == pytest.approx(16 / 4)


def test_a_late_sample_counts_in_the_open_second_and_nothing_is_lost():
    series = Series()
    series.add(200.5, 1.0)
    series.close_before(201.0)
    series.add(199.0, 5.0)  # its second is closed already: it counts in the next one
    series.close_before(203.0)
    points = series.points(0)
    assert points["t"] == [200, 201] and points["count"] == [1, 1] and points["last"] == [1, 5]


def test_seven_simulated_days_at_one_report_per_second_keep_memory_and_points_bounded():
    view = JobView()
    report = {"type": EventType.METRIC, "name": "loss", "rank": 0}
    seconds = 7 * DAY
    for i in range(seconds):
        view.apply({**report, "ts": T0 + i + 0.5, "value": float(i % 97), "step": i})
        if i == DAY:
            after_one_day = series_bytes(view.series.sets["metrics"].series[("loss", "")])
    view.flush(T0 + seconds + 1)
    series = view.series.sets["metrics"].series[("loss", "")]
    held = [len(ring) for ring in series.rings]
    assert held == [level.capacity for level in LEVELS] and sum(held) == POINTS_PER_SERIES
    assert series_bytes(series) <= SERIES_MAX_BYTES
    assert series_bytes(series) < 1.1 * POINTS_PER_SERIES * 48 and after_one_day < SERIES_MAX_BYTES
    week = view.points("metrics", "loss", level=3)
    assert week["t"][-1] - week["t"][0] <= LEVELS[3].span_s  # the oldest points fell off
    assert sum(week["count"]) <= LEVELS[3].span_s + LEVELS[3].resolution_s
    assert view.points("metrics", "loss", level=0)["t"][-1] == T0 + seconds - 1


# ------------------------------------------------------------------ cardinality
@pytest.mark.parametrize("name, expected", [
    ("step-123", "step-#"), ("step-124", "step-#"), ("gpu0/util", "gpu#/util"), ("loss", "loss"),
    ("ckpt-3fa9c2e1d0", "ckpt-#"), ("deadbeefcafe", "deadbeefcafe"), ("x" * 500, "x" * 120),
])
def test_names_are_normalised(name, expected):
    assert normalise(name) == expected


def test_a_barrier_named_per_step_is_one_row_and_two_series():
    view = JobView()
    clock = Clock(view)
    for step in range(2000):
        clock.now = T0 + step
        clock.emit(EventType.BARRIER, name=f"step-{step}", call=1, world_size=8, completions=1,
                   latency_us=900, p50_us=400, p99_us=850, max_us=900, rank=0, node_id="n0")
    barriers = view.snapshot()["barriers"]
    kept = [f"step-{i}" for i in range(VARIANTS)] + ["step-#"]
    assert [b["name"] for b in barriers["names"]] == kept
    assert barriers["names"][-1]["completions"] == 2000 - VARIANTS and barriers["folded"] == 0
    assert barriers["names"][-1]["p99_us"] == 850
    measures = ("p50_us", "p99_us", "max_us")
    assert list(view.series.sets["barriers"].series) == [(name, m) for name in kept for m in measures]
    assert list(view.snapshot()["series"]["barriers"]["last"])[-3:] == [f"step-#/{m}" for m in measures]


def test_names_that_only_look_alike_keep_their_own_name():
    table = NameTable(64, "metric names")
    names = [f"gpu{i}/util" for i in range(8)] + ["top1", "top5", "loss"]
    assert [table.key(name) for name in names] == names
    assert table.key("gpu8/util") == "gpu#/util" and table.key("gpu0/util") == "gpu0/util"


def test_names_over_the_cap_fold_into_other_counted_and_warned_once(caplog):
    view = JobView(series_cap=4)
    with caplog.at_level(logging.WARNING, logger="torchrt.view.names"):
        for i, word in enumerate(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]):
            view.apply({"type": EventType.METRIC, "ts": T0 + i, "name": word, "value": 1.0})
    metrics = view.series.sets["metrics"]
    assert [subject for subject, _ in metrics.series] == ["alpha", "beta", "gamma", "delta", OTHER]
    assert metrics.names.folded == 3 and view.snapshot()["series"]["metrics"]["folded"] == 3
    assert len([r for r in caplog.records if "kept as 'other'" in r.getMessage()]) == 1


def test_a_name_table_needs_room_for_one_name():
    with pytest.raises(FieldError, match="cap of barrier names: expected a number >= 1, got 0"):
        NameTable(0, "barrier names")


# ------------------------------------------------------------------------ folds
def test_the_rendezvous_fold_follows_membership_from_its_events_alone():
    view = JobView()
    clock = Clock(view)
    membership = Membership(RoundSettings(min_nodes=2, max_nodes=3, last_call_timeout=1.0, rejoin_timeout=30.0),
                            clock.emit)
    fold = view.parts[1]

    def same_as_membership() -> None:
        assert {n["node_id"]: (n["status"], n["rank"], n["round"]) for n in fold.rows("nodes")} == \
               {n.node_id: (n.status.value, n.rank, n.round) for n in membership.nodes.values()}
        assert fold.missing() == (membership.outstanding_participants() if membership.next_round_needed() else [])

    for i, node in enumerate("abc"):
        membership.connect(node, {"addr": f"10.0.0.{i}", "hostname": node, "device_kind": "cpu"}, clock.now)
        membership.join(node, 1000 + i, clock.now)
    assert membership.poll(clock.now).number == 1
    same_as_membership()
    clock.now += 5
    membership.fail("c", "connection lost", clock.now)  # round 2 needed; a and b must rejoin
    clock.now += 1
    membership.join("a", 1000, clock.now, cause="worker failed")
    same_as_membership()
    pending = view.snapshot()["rendezvous"]["pending"]
    assert pending["round"] == 2 and pending["missing"] == {"count": 1, "first": ["b"]}
    assert pending["waiting"] == {"count": 1, "first": ["a"]}
    clock.now += 2
    membership.join("b", 1001, clock.now, cause="worker failed")
    assert membership.poll(clock.now).number == 2
    same_as_membership()
    rendezvous = view.snapshot()["rendezvous"]
    assert rendezvous["current"]["round"] == 2 and rendezvous["current"]["participants"]["count"] == 2
    assert rendezvous["current"]["causes"][0]["node"] == "a" and rendezvous["current"]["started_at"] == T0 + 5
    assert rendezvous["nodes"]["by_status"] == {"active": 2, "dead": 1} and rendezvous["rounds_total"] == 2
    membership.close("a", clock.now)
    assert view.snapshot()["rendezvous"]["closed_by"] == "a"


def test_workers_fold_ignores_the_late_stop_of_an_earlier_incarnation():
    view = JobView()
    clock = Clock(view)
    clock.emit(EventType.WORKER_STARTED, rank=0, local_rank=0, world_size=1, local_world_size=1, node_id="n0",
               round=1, pid=100, backend="gloo")
    clock.emit(EventType.WORKER_STARTED, rank=0, local_rank=0, world_size=1, local_world_size=1, node_id="n0",
               round=2, pid=200, backend="gloo")
    clock.emit(EventType.WORKER_STOPPED, rank=0, node_id="n0", pid=100, reason="disconnected")
    assert view.page("workers", "workers")["items"][0]["state"] == "running"
    clock.emit(EventType.WORKER_STOPPED, rank=0, node_id="n0", pid=200, reason="disconnected")
    workers = view.snapshot()["workers"]
    assert workers["by_state"] == {"stopped": 1} and workers["restarted"] == 1 and workers["round"] == 2
    assert workers["recent_stops"][0]["pid"] == 200


def test_the_checkpoint_fold_summarises_per_rank_figures_and_tracks_steps_in_flight():
    fold = CheckpointFold()
    for rank in range(3):
        assert fold.apply({"type": EventType.CHECKPOINT_SAVED, "ts": T0, "step": 10, "rank": rank, "world_size": 3,
                           "bytes": 100, "stall_s": 0.1 * (rank + 1), "write_s": 1.0, "mb_s": 5.0})
    assert fold.snapshot()["saving"] == [{"step": 10, "ranks": 3, "bytes": 300, "world_size": 3, "first_at": T0,
                                          "last_at": T0}]
    assert fold.apply({"type": EventType.CHECKPOINT_COMMITTED, "ts": T0, "step": 10, "rank": 0, "world_size": 3,
                       "bytes": 300, "total_s": 2.0, "commit_s": 0.1, "mb_s": 150.0,
                       "ranks": [{"rank": r, "bytes": 100, "stall_s": 0.1 * (r + 1), "write_s": 1.0 + r,
                                  "mb_s": 5.0} for r in range(3)]})
    snapshot = fold.snapshot()
    assert snapshot["saving"] == [] and snapshot["latest_step"] == 10
    assert snapshot["committed"][0]["ranks"] == {"count": 3, "max_stall_s": pytest.approx(0.3), "max_write_s": 3.0}
    assert fold.view()["committed"][0]["ranks"][2]["write_s"] == 3.0  # the coordinator's unsummarised record
    assert not fold.apply({"type": EventType.CHECKPOINT_SAVED, "step": "ten"})


def test_page_and_points_name_what_the_view_has_when_asked_for_something_else():
    view = JobView()
    with pytest.raises(ViewQueryError, match=r"page: expected one of .*rendezvous/nodes.*; got workers/ranks"):
        view.page("workers", "ranks")
    with pytest.raises(ViewQueryError, match=r"series: no series 'loss' of 'metrics'; there are: none"):
        view.points("metrics", "loss")
    with pytest.raises(ViewQueryError, match=r"part: expected one of run, rendezvous, .*; got 'data'"):
        view.part("data")
    assert view.part("datasets").name == "datasets"


# ------------------------------------------------------------ replay == live
def _drive_a_job(emit, metric, now: list[float]) -> None:
    """Events of a small job through ``emit`` (logged) and ``metric`` (live only), time in ``now[0]``."""
    membership = Membership(RoundSettings(min_nodes=2, max_nodes=2), emit)
    emit(EventType.COORDINATOR_STARTED, endpoint="127.0.0.1:1", store_port=2, pid=3, run_id="r")
    emit(EventType.JOB_CONFIGURED, run_id="r", min_nodes=2, max_nodes=2, last_call_timeout=1.0,
         rejoin_timeout=30.0, join_timeout=900.0, heartbeat_timeout=2.5, backend="gloo")
    for i, node in enumerate(("n0", "n1")):
        membership.connect(node, {"addr": "127.0.0.1", "hostname": node}, now[0])
        membership.join(node, 1000 + i, now[0])
    membership.poll(now[0])
    for rank in range(4):
        emit(EventType.WORKER_STARTED, rank=rank, local_rank=rank % 2, world_size=4, local_world_size=2,
             node_id=f"n{rank // 2}", round=1, pid=100 + rank, backend="gloo")
        emit(EventType.DATASET_REGISTERED, rank=rank, node_id=f"n{rank // 2}", dataset="digits", size=1000,
             shards=4, world_size=4, session=f"s{rank}", assignment={"rank": rank}, epoch=0, position=0)
    for second in range(40):
        now[0] += 1.0
        for rank in range(4):
            metric({"type": EventType.METRIC, "ts": now[0] + 0.01 * rank, "name": "loss", "rank": rank,
                    "value": 1.0 / (second + 1) + rank, "step": second})
        emit(EventType.BARRIER, name=f"step-{second}", call=1, world_size=4, completions=1, latency_us=300 + second,
             p50_us=200, max_us=300 + second, rank=0, node_id="n0")
        emit(EventType.DATA_TIMING, rank=second % 4, node_id="n0", dataset="digits", samples_per_s=100.0 + second,
             wait_fraction=0.01, epoch=0)
        if second == 20:
            emit(EventType.CHECKPOINT_COMMITTED, step=20, rank=0, world_size=4, path="/c/step_20", bytes=10,
                 total_s=0.5, commit_s=0.01, mb_s=20.0, deleted=[], ranks=[])
            emit(EventType.TELEMETRY_DROPPED, rank=2, node_id="n1", count=3)
    membership.fail("n1", "connection lost", now[0])
    emit(EventType.WORKER_STOPPED, rank=3, node_id="n1", pid=103, reason="disconnected")
    emit(EventType.SHUTDOWN, reason="stopped")


def _comparable(view: JobView) -> tuple[Any, Any, dict[str, Any]]:
    pages = {f"{part.name}/{kind}": view.page(part.name, kind, 0, 10_000)
             for part in view.parts for kind in getattr(part, "row_kinds", ())}
    return json.loads(json.dumps(view.snapshot())), view.series.dump(), json.loads(json.dumps(pages))


def test_a_view_replayed_from_its_run_directory_equals_the_live_view(tmp_path):
    log = EventLog(tmp_path)
    live = JobView.replay(tmp_path, persist=True)  # nothing there yet: a fresh view that records its series
    assert live.store is not None
    live.store.segment_bytes = 4096  # compact several times during the run
    now = [time.time()]
    log.subscribe(live.apply)

    def metric(event: dict[str, Any]) -> None:
        live.apply(event)
        live.flush(now[0])

    _drive_a_job(log.emit, metric, now)
    live.close()
    log.close()
    assert list((tmp_path / SERIES_DIR).glob("points-*.jsonl"))  # appended since the last compaction
    replayed = JobView.replay(tmp_path)
    assert _comparable(replayed) == _comparable(live)
    snapshot = replayed.snapshot()
    assert snapshot["seq"] == log.last_seq and snapshot["run"]["shutdown"]["reason"] == "stopped"
    assert snapshot["workers"]["by_state"] == {"running": 3, "stopped": 1}
    assert snapshot["datasets"]["digits"]["ranks"] == 4 and snapshot["checkpoints"]["latest_step"] == 20
    assert snapshot["alerts"]["counts"] == {"telemetry_dropped": 1, "node_dead": 1}
    assert sum(replayed.points("metrics", "loss")["count"]) == 160
    assert [b["name"] for b in snapshot["barriers"]["names"]][VARIANTS:] == ["step-#"]


def test_a_torn_last_line_is_skipped_and_a_restarted_store_compacts_before_it_appends(tmp_path, caplog):
    live = JobView.replay(tmp_path, persist=True)
    for i in range(5):
        live.apply({"type": EventType.METRIC, "ts": T0 + i, "name": "loss", "value": float(i)})
    live.flush(T0 + 10)
    segment = next((tmp_path / SERIES_DIR).glob("points-*.jsonl"))
    with open(segment, "a", encoding="utf-8") as f:
        f.write('["p","metrics","loss",5,1,')  # a crash in the middle of a line
    with caplog.at_level(logging.WARNING, logger="torchrt.view.store"):
        again = JobView.replay(tmp_path, persist=True)
    assert "skipped 1 lines" in caplog.text
    assert again.points("metrics", "loss")["t"] == [T0 + i for i in range(5)]
    again.apply({"type": EventType.METRIC, "ts": T0 + 6, "name": "loss", "value": 6.0})
    again.close()
    assert not segment.exists()  # compacted into a snapshot, the torn segment deleted
    assert JobView.replay(tmp_path).points("metrics", "loss")["last"] == [0, 1, 2, 3, 4, 6]


def test_series_writes_that_fail_are_made_good_by_a_compaction_once_the_disk_can_be_written(tmp_path):
    health = WriteHealth(tmp_path)
    live = JobView.replay(tmp_path, persist=True, health=health)
    live.apply({"type": EventType.METRIC, "ts": T0, "name": "loss", "value": 1.0})
    live.flush(T0 + 1)
    segment = next((tmp_path / SERIES_DIR).glob("points-*.jsonl"))
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (segment.stat().st_size, old_limit[1]))  # a full disk, in effect
    try:
        for i in range(1, 4):
            live.apply({"type": EventType.METRIC, "ts": T0 + i, "name": "loss", "value": float(i)})
            live.flush(T0 + i + 1)
        assert not health.ok
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    live.apply({"type": EventType.METRIC, "ts": T0 + 4, "name": "loss", "value": 4.0})
    live.flush(T0 + 5)
    assert health.ok and (tmp_path / SERIES_DIR / SNAPSHOT_FILE).exists()
    live.close()
    assert JobView.replay(tmp_path).points("metrics", "loss")["last"] == [1, 1, 2, 3, 4]


def test_a_series_snapshot_that_is_not_one_is_refused_naming_the_file(tmp_path):
    (tmp_path / SERIES_DIR).mkdir()
    (tmp_path / SERIES_DIR / SNAPSHOT_FILE).write_text('{"format": 1, "levels": [[1, 60]]}')
    with pytest.raises(SeriesFileError, match=r"series/snapshot.json: expected a series snapshot of format 1 "
                                              r"with levels \[\[1, 900\]"):
        JobView.replay(tmp_path)


# ------------------------------------------------------------------ job size
def test_the_snapshot_of_a_thousand_rank_job_is_small_and_lists_are_pages():
    view = JobView()
    clock = Clock(view)
    nodes = [f"node{n:03d}" for n in range(125)]
    clock.emit(EventType.JOB_CONFIGURED, run_id="big", min_nodes=125, max_nodes=125)
    for node in nodes:
        clock.emit(EventType.NODE_JOINED, node=node, hostname=f"host-{node}.cluster.example", addr="10.1.2.3",
                   nproc=8, device_kind="cuda", device_count=8)
        clock.emit(EventType.NODE_WAITING, node=node, round=0)
    clock.emit(EventType.ROUND_STARTED, round=1, reason="initial")
    clock.emit(EventType.ROUND_COMPLETED, round=1, world_size=125, participants=nodes, reason="initial",
               backend="nccl", dropped=[], spares=[], waiting_s=1.0, last_call_s=0.0, total_s=1.0)
    for rank in range(1000):
        node = nodes[rank // 8]
        clock.emit(EventType.WORKER_STARTED, rank=rank, local_rank=rank % 8, world_size=1000, local_world_size=8,
                   node_id=node, round=1, pid=10_000 + rank, backend="nccl")
        assignment = {"scheme": "strided", "rule": "rank r reads global positions p + r + k*world_size, k < "
                      "batch_size, of each step starting at position p", "rank": rank, "world_size": 1000,
                      "batch_size": 32, "start_position": 0, "end_position": 10_000_000, "steps": 312, "samples": 9984}
        clock.emit(EventType.DATASET_REGISTERED, rank=rank, node_id=node, dataset="web", size=10_000_000,
                   shards=1024, world_size=1000, session=f"s{rank}", assignment=assignment, epoch=0, position=0)
        clock.emit(EventType.DATA_PROGRESS, rank=rank, node_id=node, dataset="web", session=f"s{rank}", epoch=0,
                   position=64_000, size=10_000_000, samples=64)
        clock.emit(EventType.DATA_TIMING, rank=rank, node_id=node, dataset="web", samples_per_s=320.0,
                   wait_fraction=0.02, epoch=0, window_s=5.0)
        clock.emit(EventType.CHECKPOINT_SAVED, rank=rank, node_id=node, step=100, world_size=1000,
                   path="/ckpt/step_100", bytes=1 << 30, stall_s=0.2, write_s=3.0, mb_s=350.0)
        view.apply({"type": EventType.METRIC, "ts": clock.now, "name": "loss", "rank": rank, "value": 2.5, "step": 100})
    clock.emit(EventType.CHECKPOINT_COMMITTED, step=100, rank=0, world_size=1000, path="/ckpt/step_100",
               bytes=1000 << 30, total_s=5.0, commit_s=0.3, mb_s=200_000.0, deleted=[],
               ranks=[{"rank": r, "bytes": 1 << 30, "stall_s": 0.2, "write_s": 3.0, "mb_s": 350.0} for r in range(1000)])
    started = time.perf_counter()
    text = json.dumps(view.snapshot())
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"snapshot of 1,000 ranks: {len(text):,} bytes, built and encoded in {elapsed_ms:.1f} ms")
    assert len(text) < 64 * 1024  # the monitor's goal for its whole first answer is 256 KB
    snapshot = json.loads(text)
    assert snapshot["workers"]["total"] == 1000 and snapshot["rendezvous"]["nodes"]["total"] == 125
    assert snapshot["datasets"]["web"]["ranks"] == 1000 and snapshot["datasets"]["web"]["samples_in_epoch"] == 64_000
    assert snapshot["checkpoints"]["committed"][0]["ranks"]["count"] == 1000
    workers = view.page("workers", "workers", offset=990, limit=100)
    assert workers["total"] == 1000 and [w["rank"] for w in workers["items"]] == list(range(990, 1000))
    assert view.page("datasets", "ranks", limit=5)["total"] == 1000
    assert math.isclose(snapshot["series"]["metrics"]["last"]["loss"][1], 2.5)


def test_a_second_of_a_thousand_ranks_reports_and_snapshots_set_off_no_garbage_collection():
    """At a thousand ranks the coordinator folds a step report every millisecond and snapshots the
    view several times a second, in a process that has torch loaded, where one full pass of Python's
    garbage collector takes ~0.2 s of its loop. So neither may leave per-rank objects the collector
    tracks (a report kept with its scalars) nor make thousands at once (a tuple per rank in the
    snapshot): either sets off collections that promote them, then full passes (measured at the
    coordinator: ~50 ms of them a second, and snapshots of 13 ms instead of 6)."""
    view = JobView()
    clock = Clock(view)
    for rank in range(1000):
        clock.emit(EventType.WORKER_STARTED, rank=rank, local_rank=rank % 8, world_size=1000, local_world_size=8,
                   node_id=f"node{rank // 8}", round=1, pid=10_000 + rank, backend="gloo")

    def second(t: float) -> list[dict[str, Any]]:
        return [{"type": EventType.STEP, "ts": t + rank / 1000, "rank": rank, "step": int(t), "steps": 10,
                 "step_ms": 100.0 + rank % 7, "samples_per_s": 640.0, "busy_ms": 90.0, "data_wait_ms": 5.0,
                 "epoch": 0, "position": 640, "dataset": "train", "loss": 0.5, "scalars": {"lr": 0.1}}
                for rank in range(1000)]

    for event in second(T0 + 1):  # every rank has reported once: what a report replaces is there
        view.apply(event)
    reports = second(T0 + 2)
    collections: list[int] = []

    def noted(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    gc.callbacks.append(noted)
    try:
        for event in reports:
            view.apply(event)
        for _ in range(5):
            view.snapshot()
    finally:
        gc.callbacks.remove(noted)
        gc.set_threshold(*threshold)
    assert collections == [], f"{len(collections)} garbage collections (generations {collections})"
    assert view.snapshot()["workers"]["progress"]["reporting"] == 1000


class _Fragile:
    """A part that cannot take a checkpoint_failed event (its step is not a number)."""

    name = "fragile"
    types = frozenset({EventType.CHECKPOINT_FAILED})

    def apply(self, event: dict) -> bool:
        return int(event["step"]) >= 0

    def snapshot(self) -> dict:
        return {}


def test_an_event_a_part_cannot_take_is_counted_against_it_warned_once_and_the_others_take_it(caplog):
    view = JobView(parts=[_Fragile(), CheckpointFold()])
    bad = {"type": EventType.CHECKPOINT_FAILED, "seq": 1, "ts": 1.0, "step": {"not": "a step"}, "error": "x"}
    with caplog.at_level(logging.WARNING, logger="torchrt.view.job"):
        assert view.apply(bad) is True  # the checkpoint fold took it
        view.apply({**bad, "seq": 2})
    assert view.snapshot()["failures"] == {"fragile": 2}
    assert view.snapshot()["checkpoints"]["problems_total"] == 2
    assert [r.getMessage() for r in caplog.records].count(
        "job view: the fragile part could not take a checkpoint_failed event (TypeError: int() argument must be a "
        "string, a bytes-like object or a real number, not 'dict'); such events are counted in its snapshot's "
        "'failures'") == 1
