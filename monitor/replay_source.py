"""The monitor's replay source: a finished (or crashed) run, from its directory alone.

:class:`ReplaySource` reads a run directory alone: the view is ``JobView.replay`` (its series from
``series/``). ``at=`` (the time slider) shows the view as of that time: a second view folds the
events with ``ts <= at``, kept with a cursor so that moving forward folds only the events in
between (moving back starts again), and series points are cut to the buckets that ended by ``at``. Previews are live
only (docs/view.md): a replay has none, and says so.

What the answers share with a live source (secrets left out, dumps grouped) is in :mod:`monitor.sources`.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchrt.contract import STACK_DUMP_TIMEOUT_S
from torchrt.coordinator.run_dir import EVENTS_FILE, STATE_FILE, read_events
from torchrt.coordinator.stacks import STACKS_DIR
from torchrt.view.job import JobView
from torchrt.view.series import LEVELS, series_name

from monitor.errors import NotFoundError, NotLiveError
from monitor.logs import EventIndex, EventQuery
from monitor.sources import Listener, RunRecord, check_level, grouped_dump, public, read_dump, versions, view_query

__all__ = ["ReplaySource"]


class ReplaySource(RunRecord):
    """The view of a finished (or crashed) run, from its directory alone (see the module docstring)."""

    mode = "replay"

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        if not (self.run_dir / EVENTS_FILE).is_file():
            raise NotFoundError(f"{self.run_dir}: no {EVENTS_FILE}: not a torchrt run directory")
        self.view = JobView.replay(self.run_dir)
        self.log = EventIndex(self.run_dir)
        try:
            self._state = json.loads((self.run_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._state = {}
        self._lock = threading.Lock()
        self._cursor = _Cursor(self.run_dir)

    def _view(self, at: float | None) -> JobView:
        return self.view if at is None else self._cursor.at(at)

    def snapshot(self, at: float | None = None) -> dict[str, Any]:
        with self._lock:
            state = self._view(at).snapshot()
            if at is not None:
                state["series"] = self._series_at(at)
        return {"coordinator": self._state.get("coordinator") or state["run"].get("coordinator"), **state,
                "tensorboard": str(self.run_dir / "tensorboard"), "written_at": at or self._state.get("written_at")}

    def page(self, part: str, kind: str, offset: int = 0, limit: int = 100, at: float | None = None) -> dict[str, Any]:
        with self._lock:
            return view_query(lambda: self._view(at).page(part, kind, offset, limit))

    def points(self, part: str, subject: str, measure: str = "", level: int = 0,
               at: float | None = None) -> dict[str, Any]:
        check_level(level)
        with self._lock:
            found = view_query(lambda: self.view.points(part, subject, measure, level))
        return found if at is None else _cut(found, at, level)

    def _series_at(self, at: float) -> dict[str, Any]:
        """The snapshot's ``series`` (each series' newest ``[t, value]``) as of ``at``."""
        out: dict[str, Any] = {}
        for part, subject, measure, series in self.view.series.each():
            entry = out.setdefault(part, {"folded": self.view.series.sets[part].names.folded, "last": {}})
            for level in range(len(LEVELS)):
                cut = _cut(series.points(level), at, level)
                if cut["t"]:
                    entry["last"][series_name(subject, measure)] = [cut["t"][-1], cut["last"][-1]]
                    break
        return out

    def stack_dump(self, request: int) -> dict[str, Any]:
        dump = read_dump(self.run_dir, request)
        if dump is None:
            raise NotFoundError(f"no stack dump {request} in {self.run_dir}")
        return grouped_dump(dump, f"{STACKS_DIR}/{request}.json")

    def take_stacks(self, rank: int | None, timeout_s: float = STACK_DUMP_TIMEOUT_S) -> dict[str, Any]:
        raise NotLiveError("this is a replay of a run directory: stacks can only be taken of a running job")

    def settings(self) -> dict[str, Any]:
        run = self.view.snapshot()["run"]
        coordinator = self._state.get("coordinator") or run.get("coordinator") or {}
        return public({"mode": self.mode, "endpoint": coordinator.get("endpoint"), "connected": False,
                       "run_id": run.get("run_id"), "run_dir": str(self.run_dir.resolve()), "run_dir_readable": True,
                       "tensorboard_dir": str(self.run_dir / "tensorboard"), "versions": versions(),
                       "config": {"job": run.get("settings"), "coordinator": coordinator}})

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return lambda: None  # a finished run does not change

    def close(self) -> None:
        pass


class _Cursor:
    """A view folded up to a time, moved forward incrementally (back: from the start again)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._reset()

    def _reset(self) -> None:
        self.view = JobView()
        self.upto = float("-inf")
        self._events = read_events(self.run_dir)
        self._next: dict[str, Any] | None = next(self._events, None)

    def at(self, at: float) -> JobView:
        if at < self.upto:
            self._reset()
        while self._next is not None and _ts(self._next) <= at:
            self.view.apply(self._next, series=False)
            self._next = next(self._events, None)
        self.upto = at
        return self.view


def _ts(event: dict[str, Any]) -> float:
    ts = event.get("ts")
    return float(ts) if isinstance(ts, (int, float)) else float("-inf")


def _cut(points: dict[str, Any], at: float, level: int) -> dict[str, Any]:
    """Series points (columnar, oldest first) of samples at or before ``at`` only: a point whose
    whole bucket is (a point of the second ``at`` is in may hold a later sample)."""
    n = bisect.bisect_right(points["t"], at - LEVELS[level].resolution_s)
    return {**points, **{k: v[:n] for k, v in points.items() if isinstance(v, list)},
            "partial": points.get("partial", False) and n == len(points["t"])}
