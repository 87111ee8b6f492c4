"""What a report costs the coordinator's loop at scale (benchmarks/telemetry.py ``ingest``).

At a thousand ranks the coordinator takes about a thousand step reports and a hundred node
samples a second. These tests pin the parts of that cost that are design, not speed: a report
that has no TensorBoard scalars is not handed to the TensorBoard thread, and a large state is
not snapshot into ``state.json`` as often as a small one (whose writes tests and operators wait
on). Real files, a real writer thread; nothing is mocked.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

from torchrt.contract import EventType
from torchrt.coordinator.observe import Observation
from torchrt.coordinator.records import MetricsWriter
from torchrt.coordinator.run_dir import STATE_FILE, EventLog, WriteHealth


class SeenByWriter(MetricsWriter):
    """A MetricsWriter that notes every event its writer thread turns into records."""

    def __init__(self, run_dir: Path) -> None:
        self.seen: list[str] = []
        super().__init__(run_dir, health=WriteHealth(run_dir))

    def _records(self, event: dict) -> bytes:
        self.seen.append(event["type"])
        return super()._records(event)


def test_reports_without_scalars_never_reach_the_tensorboard_thread(tmp_path):
    writer = SeenByWriter(tmp_path)
    for step in range(500):
        writer.observe({"type": EventType.STEP, "ts": time.time(), "rank": step % 8, "step": step, "step_ms": 1.0})
        writer.observe({"type": EventType.NODE_STATS, "ts": time.time(), "cpu_percent": 1.0, "workers": []})
    writer.observe({"type": EventType.METRIC, "ts": time.time(), "name": "train/loss", "value": 0.5, "step": 1})
    writer.close()
    assert writer.seen == [EventType.METRIC]
    assert list((tmp_path / "tensorboard").glob("*tfevents*")), "the metric's scalar was written"


def snapshots_in(tmp_path: Path, describe_cost: int, span_s: float = 1.0) -> int:
    """How many state.json snapshots an Observation takes over ``span_s`` of ticks 10 ms apart, the
    view changing before every one, when its state holds a list of ``describe_cost`` integers."""
    taken = []

    def describe() -> dict:
        taken.append(time.monotonic())
        return {"endpoint": "127.0.0.1:1", "blob": list(range(describe_cost))}

    health = WriteHealth(tmp_path)
    events = EventLog(tmp_path, health=health)
    with concurrent.futures.ThreadPoolExecutor(1) as writer:
        observed = Observation(tmp_path, events, health, push=lambda kind, event: None, describe=describe,
                               writer=writer, on_stalled=lambda rank: None, state_interval=0.05)
        try:
            started = time.monotonic()
            while time.monotonic() - started < span_s:
                events.emit(EventType.METRIC, name="loss", value=1.0, step=len(taken))
                observed.write_state()
                time.sleep(0.01)  # the coordinator's tick
            observed.finish()
        finally:
            observed.close()
            events.close()
    assert json.loads((tmp_path / STATE_FILE).read_text())["coordinator"]["endpoint"] == "127.0.0.1:1"
    return len(taken) - 1  # the last: finish()'s


def test_a_large_state_is_snapshot_less_often_and_a_small_one_every_interval(tmp_path):
    small = snapshots_in(tmp_path / "small", describe_cost=10)
    large = snapshots_in(tmp_path / "large", describe_cost=300_000)  # tens of ms of JSON encoding a snapshot
    assert small >= 8, f"{small} snapshots of a small state in 1 s at an interval of 0.05 s"
    assert large <= 2, f"{large} snapshots of a large state in 1 s: each costs the loop more than 1 % of that"
