"""Workers as the record tells them: one row per global rank, with its progress and alerts.

``worker_started`` (a worker said hello: ``torchrt.init``) makes the rank's
row *running* with its node, pid, round and local rank, and a fresh progress
(a new incarnation starts over); ``worker_stopped`` (its connection closed: it
exited or died, or the coordinator restarted) makes it *stopped* with the
reason, but only when it names the rank's current process: the stop of an
earlier incarnation, arriving late, changes nothing.

**Progress** comes from the rank's step reports (:mod:`torchrt.telemetry.steps`):
``step`` (live only, about once a second) and ``step_progress`` (the same
figures, logged every 10 s, at an epoch change and as the rank's last word).
A row holds the last report's figures (:data:`PROGRESS`: step, epoch, position,
step time, samples/s, waits, loss) and when it came (``reported_at``). Since
the live reports are not in the record, a row of a *stopped* worker goes back
to its last logged report: a view replayed from the run directory then holds
the same rows as the live one, whichever way each worker ended (a worker that
exits cleanly logs its last figures, so nothing is lost then). At a thousand
ranks a report arrives every millisecond, so a report costs one small dict of
its figures (built in C: ``dict(zip(...))``), kept per rank apart from the row
and merged into it only when a page is asked for. A copy, not the report
itself: a report holds containers (its scalars), which makes it an object the
garbage collector tracks, and keeping a thousand of them alive a second made
its full passes (~0.2 s each with torch loaded) run every few seconds; a dict
of plain values is not tracked at all.

**Alerts** (``rank_straggling``, ``rank_stalled``, ``rank_recovered``, the
coordinator's decisions of :mod:`torchrt.view.alerts`) are kept per row while
active; a new incarnation of the rank starts without them.

The snapshot is a summary at any number of ranks: counts by state, world
size, the newest round, the last :data:`RECENT_STOPS` stops, and for progress
the range of steps and epochs, the job's samples/s (the sum of the running
ranks' last rates), the median and slowest step time, the :data:`SHOWN`
slowest and furthest-behind ranks, and the ranks under an alert (at most
:data:`SHOWN` named). The rows are a page (``rows("workers")``, by rank). As a
source of series it gives ``steps/step_ms``, ``steps/busy_ms``,
``steps/samples_per_s`` and ``steps/data_wait_ms``: one sample per rank and
report, so a second's point has every rank's value (min/max: the spread
between ranks; sum of ``samples_per_s``: the job's throughput).
"""

from __future__ import annotations

import heapq
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from torchrt.contract import STEP_REPORTS, EventType
from torchrt.view.fold import JSON, Event, Sample, number

__all__ = ["PROGRESS", "RECENT_STOPS", "SERIES_SUBJECT", "SHOWN", "WorkersFold"]

RECENT_STOPS = 8
SHOWN = 5  # slowest / furthest-behind ranks in the snapshot (alerted ranks: 4 x SHOWN)
_STARTED = ("local_rank", "node_id", "pid", "round", "world_size", "local_world_size", "backend")
PROGRESS = ("step", "epoch", "position", "dataset", "steps", "step_ms", "step_max_ms", "busy_ms", "samples_per_s",
            "data_wait_ms", "barrier_ms", "checkpoint_ms", "loss")
SERIES_SUBJECT = "steps"
_SERIES_MEASURES = ("step_ms", "busy_ms", "samples_per_s", "data_wait_ms")
_ALERTS = frozenset({EventType.RANK_STRAGGLING, EventType.RANK_STALLED})
# what a row keeps of an alert: the measure and how far off (ratio, and the values behind it)
_ALERT_FIELDS = ("ratio", "measure", "value_ms", "median_ms", "step", "silent_s")
_NO_PROGRESS: dict[str, Any] = dict.fromkeys(PROGRESS) | {"reported_at": None}


_ROW_KEYS = (*PROGRESS, "reported_at")  # a row's progress fields ...
_REPORT_KEYS = (*PROGRESS, "ts")  # ... from these of its step report


def _progress_of(report: Event) -> dict[str, Any]:
    """A row's progress fields from a step report (see the module docstring)."""
    return dict(zip(_ROW_KEYS, map(report.get, _REPORT_KEYS)))


class WorkersFold:
    """Every rank's worker: running or stopped, where, since when, how far (see the module docstring)."""

    name = "workers"
    types = frozenset({EventType.WORKER_STARTED, EventType.WORKER_STOPPED, EventType.RANK_RECOVERED}) \
        | STEP_REPORTS | _ALERTS
    row_kinds = ("workers",)

    def __init__(self) -> None:
        self.ranks: dict[int, dict[str, Any]] = {}  # rank -> its row, but for the progress fields:
        self.progress: dict[int, dict[str, Any]] = {}  # rank -> the progress its row shows
        self.logged: dict[int, dict[str, Any]] = {}  # rank -> the progress of its last logged report
        self.world_size: int | None = None
        self.round: int | None = None
        self.stops: deque[dict[str, Any]] = deque(maxlen=RECENT_STOPS)

    def apply(self, event: Event) -> bool:
        rank = event.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool):
            return False
        kind = event.get("type")
        if kind == EventType.WORKER_STARTED:
            self._started(rank, event)
            return True
        row = self.ranks.get(rank)
        if kind == EventType.WORKER_STOPPED:
            if row is None or row["state"] != "running" or event.get("pid") != row["pid"]:
                return True  # a stop of an incarnation that is not the rank's current one
            row.update(state="stopped", stopped_at=event.get("ts"), reason=event.get("reason"))
            last = self.logged.get(rank)  # what the record holds of its progress
            if last is None:
                self.progress.pop(rank, None)
            else:
                self.progress[rank] = last
            self.stops.append({k: row[k] for k in ("rank", "node_id", "pid", "stopped_at", "reason")})
            return True
        if row is None or row["state"] != "running":
            return False  # a report or alert of a rank that has no running worker in the record
        if kind in STEP_REPORTS:
            progress = self.progress[rank] = _progress_of(event)
            if kind == EventType.STEP_PROGRESS:
                self.logged[rank] = progress
        elif kind in _ALERTS:
            kept = {k: event.get(k) for k in _ALERT_FIELDS if k in event}
            row["alerts"] = {**row["alerts"], str(kind): kept | {"since": event.get("ts")}}
        else:  # rank_recovered
            was = event.get("was")
            row["alerts"] = {k: v for k, v in row["alerts"].items() if k != was}
        return True

    def running(self, rank: int) -> bool:
        """Whether the record has a running worker of ``rank``."""
        row = self.ranks.get(rank)
        return row is not None and row["state"] == "running"

    def _started(self, rank: int, event: Event) -> None:
        previous = self.ranks.get(rank)
        self.ranks[rank] = {"rank": rank, **{k: event.get(k) for k in _STARTED}, "state": "running",
                            "started_at": event.get("ts"), "stopped_at": None, "reason": None,
                            "starts": (previous["starts"] if previous else 0) + 1, **_NO_PROGRESS, "alerts": {}}
        self.progress.pop(rank, None)
        self.logged.pop(rank, None)
        if isinstance(event.get("world_size"), int):
            self.world_size = event["world_size"]
        if isinstance(event.get("round"), int):
            self.round = event["round"] if self.round is None else max(self.round, event["round"])

    def samples(self, event: Event) -> Iterable[Sample]:
        if event.get("type") not in STEP_REPORTS:
            return ()
        get = event.get
        return [(SERIES_SUBJECT, measure, value) for measure in _SERIES_MEASURES
                if (value := number(get(measure))) is not None]

    def snapshot(self) -> JSON:
        by_state: dict[str, int] = {}
        nodes: set[Any] = set()
        for row in self.ranks.values():
            by_state[row["state"]] = by_state.get(row["state"], 0) + 1
            if isinstance(row["node_id"], str):
                nodes.add(row["node_id"])
        return {"total": len(self.ranks), "by_state": by_state, "world_size": self.world_size, "round": self.round,
                "nodes": len(nodes), "restarted": sum(1 for row in self.ranks.values() if row["starts"] > 1),
                "recent_stops": list(self.stops), "progress": self._progress(), "alerts": self._alerts()}

    def _progress(self) -> JSON:
        """The running ranks' progress, summarised (in rank-row order, as a replay has it).

        A snapshot is taken several times a second at a thousand ranks, so this makes no object per
        rank that the garbage collector tracks (lists of numbers and of the rows' own dicts; the
        slowest and furthest-behind come from heaps of five): a burst of thousands of tuples here
        set off collections that promoted them, and then the collector's full passes."""
        progress = self.progress
        reports, steps, stepped, epochs, times, timed, rates = [], [], [], [], [], [], []
        for rank, row in self.ranks.items():
            report = progress.get(rank)
            if row["state"] != "running" or report is None or report["reported_at"] is None:
                continue
            reports.append(report)
            if isinstance(step := report["step"], int):
                steps.append(step)
                stepped.append(rank)
            if isinstance(epoch := report["epoch"], int):
                epochs.append(epoch)
            if (value := number(report["step_ms"])) is not None:
                times.append(value)
                timed.append(rank)
            if (value := number(report["samples_per_s"])) is not None:
                rates.append(value)
        slowest = heapq.nlargest(SHOWN, zip(times, timed))
        behind = heapq.nsmallest(SHOWN, zip(steps, stepped))
        return {"reporting": len(reports),
                "step": {"min": min(steps, default=None), "max": max(steps, default=None)},
                "epoch": {"min": min(epochs, default=None), "max": max(epochs, default=None)},
                "samples_per_s": round(sum(rates), 3) if rates else None,
                "step_ms": {"median": round(statistics.median(times), 3) if times else None,
                            "max": slowest[0][0] if slowest else None},
                "slowest": [{"rank": rank, "step_ms": value} for value, rank in slowest],
                "behind": [{"rank": rank, "step": step} for step, rank in behind],
                "last_report_at": max((report["reported_at"] for report in reports), default=None)}

    def _alerts(self) -> JSON:
        alerted = [(row["rank"], sorted(row["alerts"])) for row in self.ranks.values() if row["alerts"]]
        counts: dict[str, int] = {}
        for _, kinds in alerted:
            for kind in kinds:
                counts[kind] = counts.get(kind, 0) + 1
        return {"counts": counts, "ranks": [{"rank": rank, "alerts": kinds} for rank, kinds in
                                            sorted(alerted)[:4 * SHOWN]]}

    def rows(self, kind: str) -> Sequence[JSON]:
        progress = self.progress
        return [row | progress[rank] if rank in progress else row for rank, row in sorted(self.ranks.items())]
