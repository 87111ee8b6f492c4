"""Alerts: the straggler and stall rules, and the record of what went wrong.

**The rules** (:class:`RankAlerts`) are decision logic free of any I/O, in the
style of :mod:`torchrt.coordinator.membership`: the coordinator feeds it every
rank's step report (``step`` / ``step_progress``, :mod:`torchrt.telemetry.steps`)
with :meth:`~RankAlerts.report`, tells it when a worker starts or stops, and
calls :meth:`~RankAlerts.tick` on its housekeeping tick; the clock is passed in
(the coordinator's monotonic time), so every rule is testable in microseconds.
Decisions come out through ``emit(type, **fields)`` as coordinator events, which
are logged, so a replayed view shows the same alerts without running the rules.

* **Straggler.** Each report is judged on every measure of
  :attr:`AlertSettings.measures`: the step time (``step_ms``, the window's
  mean) and the time it waited for data (``data_wait_ms``). A measure is *slow*
  when it is above ``straggler_ratio`` (1.5) times the median of the *other*
  ranks' values of it and that excess is at least ``excess_share`` (0.2) of the
  rank's step time (so that 2 ms of data wait against 0.5 ms is no alert in a
  100 ms step). A rank slow on some measure for ``straggler_reports`` (5)
  reports in a row gets ``rank_straggling`` naming that measure and its ratio;
  once every measure is *fine* (at or below ``recover_ratio``, 1.25, or an
  excess under half the share) for ``recover_reports`` (3) reports in a row it
  gets ``rank_recovered`` (the gap between the two thresholds keeps a rank near
  the line from flapping). The median is of the others, so that with two ranks
  a rank three times slower is three times the median, not 1.5 times. The
  others' values are their latest reports no older than ``fresh_s`` (10 s),
  sorted once per :meth:`~RankAlerts.tick` (at most every
  ``evaluate_every_s``); a report then costs a binary search per measure, so a
  thousand ranks reporting every second cost the coordinator a sort of a
  thousand numbers per measure a second.
* **Stall.** A rank whose step number has not advanced for longer than its
  threshold gets ``rank_stalled`` (the coordinator then takes its stacks). The
  threshold is ``max(stall_floor_s, stall_factor x median of its last
  recent_steps step times)``: 30 s, or ten of its typical steps for a slow loop.
  A stalled rank that steps again gets ``rank_recovered``. Only ranks that
  reported at least once are watched: a script that never calls
  ``torchrt.step`` is never called stalled.

A worker that stops (or a new incarnation of its rank that starts) ends its
rank's alerts without an event: the ``worker_stopped`` / ``worker_started``
record says why, and :class:`~torchrt.view.workers.WorkersFold` clears them.

Why the data wait: in lock-step data-parallel training the collectives make
every rank's step time equal, so a rank whose loader is slow slows the whole
job rather than standing out in ``step_ms``; what stands out is that it
waits for its data while the others wait for it in the collective.

**The record** (:class:`AlertsFold`): the problem events the coordinator and
the workers record (an internal error, a run directory that could not be
written, telemetry dropped or refused, a node rejected, dead or timed out, a
checkpoint that failed, and the rules' alerts) counted by type, the last
:data:`KEEP` kept with their fields (strings cut at :data:`MAX_TEXT`).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchrt.contract import EventType
from torchrt.errors import FieldError
from torchrt.view.fold import JSON, Event, number

__all__ = ["AlertSettings", "AlertsFold", "KEEP", "MAX_TEXT", "RankAlerts", "SHOWN"]

KEEP = 200
SHOWN = 20
MAX_TEXT = 500
RANK_ALERTS = frozenset({EventType.RANK_STRAGGLING, EventType.RANK_RECOVERED, EventType.RANK_STALLED})
EventSink = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    """The rules' knobs (see the module docstring); seconds unless named otherwise."""

    straggler_ratio: float = 1.5
    straggler_reports: int = 5
    recover_ratio: float = 1.25
    recover_reports: int = 3
    stall_floor_s: float = 30.0
    stall_factor: float = 10.0
    recent_steps: int = 8
    fresh_s: float = 10.0
    evaluate_every_s: float = 1.0
    measures: tuple[str, ...] = ("step_ms", "data_wait_ms")
    excess_share: float = 0.2

    def __post_init__(self) -> None:
        checks = (("straggler_ratio", self.straggler_ratio > 1), ("recover_ratio", self.recover_ratio >= 1),
                  ("straggler_reports", self.straggler_reports >= 1), ("recover_reports", self.recover_reports >= 1),
                  ("stall_floor_s", self.stall_floor_s > 0), ("stall_factor", self.stall_factor > 0),
                  ("recent_steps", self.recent_steps >= 1), ("fresh_s", self.fresh_s > 0),
                  ("evaluate_every_s", self.evaluate_every_s >= 0),
                  ("excess_share", 0 <= self.excess_share < 1), ("measures", len(self.measures) >= 1))
        for key, ok in checks:
            if not ok:
                raise FieldError(f"alerts: {key} = {getattr(self, key)!r} is out of range", key=f"alerts.{key}",
                                 expected="a positive number (ratios > 1)", got=getattr(self, key))
        if self.recover_ratio > self.straggler_ratio:
            raise FieldError(f"alerts: recover_ratio {self.recover_ratio} must not exceed straggler_ratio "
                             f"{self.straggler_ratio}", key="alerts.recover_ratio",
                             expected=f"<= {self.straggler_ratio}", got=self.recover_ratio)


class _Rank:
    __slots__ = ("node_id", "step", "advanced_at", "reported_at", "values", "recent", "slow", "fine",
                 "straggling_since", "stalled_since")

    def __init__(self, node_id: Any, now: float, recent: int) -> None:
        self.node_id = node_id
        self.step: int | None = None
        self.advanced_at = now        # when its step number last changed
        self.reported_at = now
        self.values: dict[str, float] = {}  # its latest value of each measure (ms)
        self.recent: deque[float] = deque(maxlen=recent)
        self.slow = 0                 # reports in a row above straggler_ratio
        self.fine = 0                 # reports in a row at or below recover_ratio, while straggling
        self.straggling_since: float | None = None
        self.stalled_since: float | None = None


class RankAlerts:
    """Straggler and stall decisions over the ranks' step reports (see the module docstring)."""

    def __init__(self, settings: AlertSettings, emit: EventSink) -> None:
        self.settings = settings
        self.emit = emit
        self.ranks: dict[int, _Rank] = {}
        # per measure: the fresh ranks' values at the last evaluation, sorted, and rank -> its value there
        self._sorted: dict[str, list[float]] = {}
        self._counted: dict[str, dict[int, float]] = {}
        self._evaluated_at: float | None = None

    # ------------------------------------------------------------------ inputs
    def started(self, rank: int) -> None:
        """A worker of ``rank`` started (a new incarnation): whatever its predecessor did is over."""
        self.stopped(rank)

    def stopped(self, rank: int) -> None:
        """The worker of ``rank`` is gone: it is no longer watched."""
        self.ranks.pop(rank, None)

    def report(self, rank: int, fields: Mapping[str, Any], now: float) -> bool:
        """One step report of ``rank`` (the event's fields); False when it is not one (ignored)."""
        step = fields.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return False
        settings = self.settings
        state = self.ranks.get(rank)
        if state is None:
            state = self.ranks[rank] = _Rank(fields.get("node_id"), now, settings.recent_steps)
        state.reported_at = now
        if step != state.step:
            state.step, state.advanced_at = step, now
            if state.stalled_since is not None:
                self._recovered(rank, state, EventType.RANK_STALLED, state.stalled_since, now)
                state.stalled_since = None
        step_ms = number(fields.get("step_ms"))
        if step_ms is not None:
            state.recent.append(step_ms)
        values = {m: v for m in settings.measures if (v := number(fields.get(m))) is not None}
        if values:
            state.values.update(values)
            self._judge(rank, state, values, step_ms, now)
        return True

    def tick(self, now: float) -> None:
        """Re-sort the fresh values and look for stalls (at most every ``evaluate_every_s``)."""
        settings = self.settings
        if self._evaluated_at is not None and now - self._evaluated_at < settings.evaluate_every_s:
            return
        self._evaluated_at = now
        fresh = [(rank, s.values) for rank, s in self.ranks.items() if now - s.reported_at <= settings.fresh_s]
        self._counted = {m: {rank: values[m] for rank, values in fresh if m in values} for m in settings.measures}
        self._sorted = {m: sorted(counted.values()) for m, counted in self._counted.items()}
        for rank, state in self.ranks.items():
            if state.stalled_since is not None:
                continue
            threshold = self.stall_threshold(state)
            silent = now - state.advanced_at
            if silent > threshold:
                state.stalled_since = now
                self.emit(EventType.RANK_STALLED, rank=rank, node_id=state.node_id, step=state.step,
                          silent_s=round(silent, 3), threshold_s=round(threshold, 3))

    # ------------------------------------------------------------------- rules
    def stall_threshold(self, state: _Rank) -> float:
        settings = self.settings
        typical_s = statistics.median(state.recent) / 1000.0 if state.recent else 0.0
        return max(settings.stall_floor_s, settings.stall_factor * typical_s)

    def others_median(self, rank: int, measure: str = "step_ms") -> float | None:
        """The median of the other ranks' values of ``measure`` at the last evaluation (None: no other rank)."""
        values = self._sorted.get(measure, [])
        mine = self._counted.get(measure, {}).get(rank)
        if mine is None:
            return _median(values, None) if values else None
        if len(values) < 2:
            return None
        return _median(values, bisect.bisect_left(values, mine))

    def _judge(self, rank: int, state: _Rank, values: Mapping[str, float], step_ms: float | None,
               now: float) -> None:
        settings = self.settings
        slow: tuple[str, float, float, float] | None = None  # the measure furthest above its line
        fine = True
        for measure, value in values.items():
            median = self.others_median(rank, measure)
            if median is None:
                continue
            ratio = value / median if median > 0 else (math.inf if value > 0 else 1.0)
            # an excess is measured against the step it is part of (the step time itself: against itself)
            excess = (value - median) / max(step_ms if step_ms is not None else value, 1e-9)
            if ratio > settings.straggler_ratio and excess >= settings.excess_share:
                if slow is None or ratio > slow[1]:
                    slow = (measure, ratio, value, median)
            if ratio > settings.recover_ratio and excess >= settings.excess_share / 2:
                fine = False
        if state.straggling_since is None:
            state.slow = state.slow + 1 if slow is not None else 0
            if slow is not None and state.slow >= settings.straggler_reports:
                measure, ratio, value, median = slow
                state.straggling_since, state.fine = now, 0
                self.emit(EventType.RANK_STRAGGLING, rank=rank, node_id=state.node_id,
                          ratio=round(ratio, 3) if math.isfinite(ratio) else None, value_ms=round(value, 3),
                          median_ms=round(median, 3), step_ms=step_ms, reports=state.slow, measure=measure)
            return
        state.fine = state.fine + 1 if fine else 0
        if state.fine >= settings.recover_reports:
            self._recovered(rank, state, EventType.RANK_STRAGGLING, state.straggling_since, now)
            state.straggling_since, state.slow = None, 0

    def _recovered(self, rank: int, state: _Rank, was: EventType, since: float, now: float) -> None:
        self.emit(EventType.RANK_RECOVERED, rank=rank, node_id=state.node_id, was=was, step=state.step,
                  after_s=round(now - since, 3))


def _median(values: Sequence[float], without: int | None) -> float:
    """The median of sorted ``values``, leaving out the element at index ``without``."""
    n = len(values) - (without is not None)

    def at(k: int) -> float:
        return values[k + 1] if without is not None and k >= without else values[k]

    half = n // 2
    return at(half) if n % 2 else (at(half - 1) + at(half)) / 2


def _cut(value: Any) -> Any:
    return value[:MAX_TEXT] if isinstance(value, str) else value


class AlertsFold:
    """Counts of problem events by type and the most recent ones (see the module docstring)."""

    name = "alerts"
    types = frozenset({EventType.ERROR, EventType.RUN_DIR_ERROR, EventType.TELEMETRY_DROPPED,
                       EventType.REPORT_REFUSED, EventType.NODE_REJECTED, EventType.NODE_DEAD,
                       EventType.ROUND_TIMEOUT, EventType.CHECKPOINT_FAILED}) | RANK_ALERTS
    row_kinds = ("recent",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=KEEP)

    def apply(self, event: Event) -> bool:
        kind = str(event.get("type"))
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.recent.append({k: _cut(v) for k, v in event.items()} | {"type": kind})
        return True

    def snapshot(self) -> JSON:
        return {"total": sum(self.counts.values()), "counts": dict(self.counts), "recent": list(self.recent)[-SHOWN:]}

    def rows(self, kind: str) -> Sequence[JSON]:
        return list(self.recent)
