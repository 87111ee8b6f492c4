"""The straggler and stall rules (torchrt.view.alerts.RankAlerts), driven by a manual clock.

Every test feeds step reports as the coordinator would (one per rank and second) and moves the
time by hand; the rules never read the clock, so each runs in microseconds.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from torchrt.contract import EventType
from torchrt.errors import FieldError
from torchrt.view.alerts import AlertSettings, AlertsFold, RankAlerts


class Job:
    """RankAlerts with its events collected, and ranks that report ``step_ms`` every second."""

    def __init__(self, ranks: int, step_ms: float = 100.0, **settings: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.alerts = RankAlerts(AlertSettings(**settings), self.emit)
        self.now = 0.0
        self.steps = dict.fromkeys(range(ranks), 0)
        self.step_ms = dict.fromkeys(range(ranks), step_ms)

    def emit(self, type: EventType, **fields: Any) -> None:
        self.events.append({"type": type, **fields})

    def second(self, ranks: list[int] | None = None) -> None:
        """One second: every rank in ``ranks`` (default: all) reports a window of steps, then a tick."""
        self.now += 1.0
        for rank in self.steps if ranks is None else ranks:
            self.steps[rank] += 10
            self.alerts.report(rank, {"step": self.steps[rank], "step_ms": self.step_ms[rank], "node_id": f"n{rank}"},
                               self.now)
        self.alerts.tick(self.now)

    def of(self, type: EventType) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type]


def test_a_slow_rank_is_flagged_after_five_slow_reports_with_its_ratio_and_clears_after_three_good_ones():
    job = Job(4)
    job.second()
    job.step_ms[3] = 300.0
    for _ in range(4):
        job.second()
    assert not job.events  # four slow reports: not yet
    job.second()
    [alert] = job.of(EventType.RANK_STRAGGLING)
    assert alert == {"type": EventType.RANK_STRAGGLING, "rank": 3, "node_id": "n3", "ratio": 3.0, "value_ms": 300.0,
                     "median_ms": 100.0, "step_ms": 300.0, "reports": 5, "measure": "step_ms"}
    for _ in range(10):
        job.second()
    assert len(job.of(EventType.RANK_STRAGGLING)) == 1  # raised once, not every report
    job.step_ms[3] = 105.0
    job.second()
    job.second()
    assert not job.of(EventType.RANK_RECOVERED)
    job.second()
    [recovered] = job.of(EventType.RANK_RECOVERED)
    assert recovered["rank"] == 3 and recovered["was"] == EventType.RANK_STRAGGLING and recovered["after_s"] == 13.0


def test_with_two_ranks_the_ratio_is_to_the_other_rank_not_to_a_median_that_includes_the_slow_one():
    job = Job(2)
    job.second()
    job.step_ms[1] = 300.0
    for _ in range(5):
        job.second()
    [alert] = job.of(EventType.RANK_STRAGGLING)
    assert alert["rank"] == 1 and alert["ratio"] == 3.0  # the two-rank median would say 1.5 and miss it


def test_a_fast_report_breaks_a_slow_streak_and_a_rank_between_the_ratios_stays_flagged():
    job = Job(4)
    job.second()
    job.step_ms[0] = 200.0
    for i in range(9):
        job.step_ms[0] = 100.0 if i == 4 else 200.0  # four slow, one fine, four slow: never five in a row
        job.second()
    assert not job.events
    job.second()  # the fifth slow one in a row
    assert len(job.of(EventType.RANK_STRAGGLING)) == 1
    job.step_ms[0] = 140.0  # 1.4x: under the straggler ratio, above the recover ratio
    for _ in range(10):
        job.second()
    assert not job.of(EventType.RANK_RECOVERED)


def test_uniformly_slow_ranks_are_no_stragglers():
    job = Job(8, step_ms=100.0)
    for second in range(30):
        for rank in job.step_ms:
            job.step_ms[rank] = 100.0 + 10 * second + rank  # the whole job slows down, ranks close together
        job.second()
    assert not job.events


def test_a_rank_that_stops_stepping_is_stalled_after_the_floor_and_recovers_when_it_steps_again():
    job = Job(3)
    for _ in range(5):
        job.second()
    for _ in range(29):  # rank 2 makes no progress; 10 x its 100 ms steps is under the 30 s floor
        job.second(ranks=[0, 1])
    assert not job.events
    job.second(ranks=[0, 1])
    job.second(ranks=[0, 1])
    [stalled] = job.of(EventType.RANK_STALLED)
    assert stalled == {"type": EventType.RANK_STALLED, "rank": 2, "node_id": "n2", "step": 50, "silent_s": 31.0,
                       "threshold_s": 30.0}
    for _ in range(5):
        job.second(ranks=[0, 1])
    assert len(job.of(EventType.RANK_STALLED)) == 1  # once per stall
    job.second()
    [recovered] = job.of(EventType.RANK_RECOVERED)
    assert recovered["rank"] == 2 and recovered["was"] == EventType.RANK_STALLED and recovered["step"] == 60


def test_the_same_step_reported_again_is_no_progress():
    job = Job(1)
    job.second()
    for second in range(40):
        job.now += 1.0
        job.alerts.report(0, {"step": 10, "step_ms": 100.0}, job.now)  # a last word repeated: step 10 again
        job.alerts.tick(job.now)
    assert [e["rank"] for e in job.of(EventType.RANK_STALLED)] == [0]


def test_a_slow_loop_gets_ten_of_its_steps_before_it_is_called_stalled():
    job = Job(1, step_ms=8_000.0)  # 8 s steps: threshold 80 s, not the 30 s floor
    job.second()
    job.now += 79.0
    job.alerts.tick(job.now)
    assert not job.events
    job.now += 2.0
    job.alerts.tick(job.now)
    assert job.of(EventType.RANK_STALLED)[0]["threshold_s"] == 80.0


def test_stopped_ranks_and_ranks_that_never_reported_are_not_watched_and_a_new_incarnation_starts_clean():
    job = Job(3)
    job.second()
    job.alerts.stopped(1)
    job.now += 100.0
    job.alerts.tick(job.now)
    assert sorted(e["rank"] for e in job.of(EventType.RANK_STALLED)) == [0, 2]  # not 1 (gone), no unknown rank
    job.alerts.started(2)  # rank 2 restarted: its stall belongs to its predecessor
    job.alerts.report(2, {"step": 0, "step_ms": 100.0}, job.now)
    assert not job.of(EventType.RANK_RECOVERED)


def test_malformed_reports_are_ignored():
    job = Job(2)
    assert not job.alerts.report(0, {"step": "ten"}, 1.0)
    assert not job.alerts.report(0, {"step": True}, 1.0)
    assert job.alerts.report(0, {"step": 1, "step_ms": "slow"}, 1.0)  # a step, with no usable time
    assert job.alerts.ranks[0].values == {}


def test_the_rules_can_judge_busy_time_instead_of_step_time():
    job = Job(4, measures=("busy_ms",))
    job.second()
    for _ in range(6):
        job.now += 1.0
        for rank in range(4):  # equal step times (lock-step), but rank 0 computes 3x longer
            job.alerts.report(rank, {"step": int(job.now), "step_ms": 300.0, "busy_ms": 300.0 if rank == 0 else 100.0},
                              job.now)
        job.alerts.tick(job.now)
    assert [e["rank"] for e in job.of(EventType.RANK_STRAGGLING)] == [0]


def lock_step(job: Job, seconds: int, data_wait_ms: dict[int, float], step_ms: float = 350.0) -> None:
    """Ranks in lock-step (equal step times, the collectives see to it) with per-rank data waits."""
    for _ in range(seconds):
        job.now += 1.0
        for rank in job.steps:
            job.steps[rank] += 3
            job.alerts.report(rank, {"step": job.steps[rank], "step_ms": step_ms, "node_id": f"n{rank}",
                                     "data_wait_ms": data_wait_ms.get(rank, 1.0)}, job.now)
        job.alerts.tick(job.now)


def test_in_lock_step_a_rank_that_waits_for_its_data_is_the_straggler_and_clears_when_its_loader_recovers():
    job = Job(4)
    lock_step(job, 6, {2: 250.0})  # rank 2's loader is slow; the others wait for it in all_reduce
    [alert] = job.of(EventType.RANK_STRAGGLING)
    assert alert["rank"] == 2 and alert["measure"] == "data_wait_ms" and alert["value_ms"] == 250.0
    assert alert["median_ms"] == 1.0 and alert["ratio"] == 250.0
    lock_step(job, 3, {})
    [recovered] = job.of(EventType.RANK_RECOVERED)
    assert recovered["rank"] == 2 and recovered["was"] == EventType.RANK_STRAGGLING


def test_a_data_wait_small_against_the_step_is_no_alert_however_large_its_ratio():
    job = Job(4)
    lock_step(job, 10, {1: 30.0}, step_ms=350.0)  # 30x the others' wait, but 8% of the step
    assert not job.of(EventType.RANK_STRAGGLING)
    lock_step(job, 10, {1: 30.0, 0: 0.0, 2: 0.0, 3: 0.0}, step_ms=350.0)  # the others do not wait at all
    assert not job.of(EventType.RANK_STRAGGLING)


@pytest.mark.parametrize(("settings", "message"), [
    ({"straggler_ratio": 1.0}, r"alerts: straggler_ratio = 1.0 is out of range"),
    ({"stall_floor_s": 0}, r"alerts: stall_floor_s = 0 is out of range"),
    ({"recover_ratio": 2.0}, r"alerts: recover_ratio 2.0 must not exceed straggler_ratio 1.5"),
])
def test_settings_out_of_range_are_refused_naming_the_key(settings, message):
    with pytest.raises(FieldError, match=message):
        AlertSettings(**settings)


def test_a_thousand_ranks_reporting_every_second_cost_little():
    job = Job(1000)
    job.second()
    job.step_ms[7] = 500.0
    started = time.perf_counter()
    for _ in range(10):
        job.second()
    per_second_ms = (time.perf_counter() - started) * 100
    print(f"1,000 ranks: {per_second_ms:.2f} ms of rules per simulated second")
    assert [e["rank"] for e in job.of(EventType.RANK_STRAGGLING)] == [7]


def test_the_alerts_fold_records_the_rules_decisions():
    fold = AlertsFold()
    for kind in (EventType.RANK_STRAGGLING, EventType.RANK_STALLED, EventType.RANK_RECOVERED):
        assert kind in fold.types
        fold.apply({"type": kind, "seq": 1, "ts": 1.0, "rank": 3})
    assert fold.snapshot()["counts"] == {"rank_straggling": 1, "rank_stalled": 1, "rank_recovered": 1}
