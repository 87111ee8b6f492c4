"""The coordinator's observation side: the job view, the alert rules, TensorBoard and state.json.

The control plane (membership, rounds, the store) is the server's; everything
the coordinator only *watches* is here, so the server knows neither the
features' events nor their modules:

* the :class:`~torchrt.view.JobView`, rebuilt from the run directory when the
  coordinator starts (a coordinator started again on a run directory goes on
  from what the earlier one recorded) and subscribed to the :class:`EventLog`
  before anything new is recorded, so it sees every logged event, in order;
  reports that are not logged (the contract's :data:`~torchrt.contract.LIVE_PUSH`:
  a rank's second of steps, a node's sample, user metrics, sample previews) are
  folded in by :meth:`Observation.record` and pushed to subscribers as their
  kind. :meth:`Observation.tick` closes and persists the series' finished
  seconds once per wall-clock second; :meth:`Observation.finish` closes them all
  at shutdown;
* the straggler and stall rules (:class:`~torchrt.view.alerts.RankAlerts`) fed
  with every step report (live and logged), the workers' starts and stops, and
  the coordinator's tick (monotonic time); their decisions are logged events,
  and a ``rank_stalled`` also asks for that rank's stacks (``on_stalled``);
* TensorBoard (:class:`~torchrt.coordinator.records.MetricsWriter`), fed with
  every event, logged or live;
* ``state.json``: the view's snapshot (:meth:`Observation.state`), written off
  the loop at most every ``state_interval`` seconds once the view changed, and
  less often when the snapshot is large: taking it costs the loop (~4 ms at a
  thousand ranks), so the interval grows with that cost to keep it under
  :data:`STATE_SHARE` of the loop's time, up to :data:`MAX_STATE_INTERVAL_S`.

Everything here runs on the coordinator's loop thread, as the server does.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchrt.contract import LIVE_PUSH, STEP_REPORTS, EventType, Push
from torchrt.coordinator.access import Accepted
from torchrt.coordinator.records import MetricsWriter
from torchrt.coordinator.run_dir import STATE_FILE, EventLog, WriteHealth, write_text_atomic
from torchrt.view.alerts import AlertSettings, RankAlerts
from torchrt.view.fold import ViewQueryError
from torchrt.view.job import JobView
from torchrt.view.workers import WorkersFold

__all__ = ["MAX_PAGE", "MAX_SERIES", "Observation"]

MAX_PAGE = 1000  # rows one status op may ask of one list
MAX_SERIES = 16  # series one status op may ask the points of
FLUSH_EVERY_S = 1.0  # the series' finished seconds are persisted this often
STATE_SHARE = 0.01  # at most this fraction of the loop's time goes into state.json snapshots
MAX_STATE_INTERVAL_S = 5.0  # however large the state, state.json is this fresh
Event = dict[str, Any]


class Observation:
    """What the coordinator watches (see the module docstring).

    ``push(kind, event)`` sends a live report to the subscribers; ``describe()`` is the
    coordinator's own record (endpoint, pid, ...) for the state; ``writer`` is the executor that
    writes ``state.json``; ``on_stalled(rank)`` is called when a rank is found stalled."""

    def __init__(self, run_dir: Path, events: EventLog, health: WriteHealth, *,
                 push: Callable[[Push, Event], None], describe: Callable[[], dict[str, Any]],
                 writer: concurrent.futures.Executor, on_stalled: Callable[[int], None],
                 alerts: AlertSettings | None = None, state_interval: float = 0.2) -> None:
        self.run_dir = Path(run_dir)
        self.events = events
        self.health = health
        self.push, self.describe, self.writer, self.on_stalled = push, describe, writer, on_stalled
        self.state_interval = state_interval
        self.view = JobView.replay(self.run_dir, persist=True, health=health)
        self.alerts = RankAlerts(alerts or AlertSettings(), self._decided)
        self.metrics = MetricsWriter(self.run_dir, health=health)
        events.subscribe(self.view.apply)  # before anything new is recorded: the view sees every event
        events.subscribe(self._observe)
        events.subscribe(self.metrics.observe)
        self._changed = True
        self._flushed_at = 0.0
        self._written_at = 0.0
        self._state_cost = 0.0  # CPU seconds the last snapshot took the loop thread
        self._write: concurrent.futures.Future[None] | None = None
        self._finished = False

    # ---------------------------------------------------------------- inputs
    def record(self, report: Accepted) -> None:
        """One accepted report: logged (the view takes it from the log), or folded in and pushed
        live when the contract says it is not logged."""
        push = LIVE_PUSH.get(report.type)
        if push is None:
            event = self.events.emit(report.type, **report.fields)
        else:
            event = {"type": report.type, "ts": report.ts if report.ts is not None else time.time(), **report.fields}
            self.view.apply(event)
            self.metrics.observe(event)
            self._changed = True
            self.push(push, event)
        if report.type in STEP_REPORTS and isinstance(event.get("rank"), int):
            self.alerts.report(event["rank"], event, time.monotonic())

    def _observe(self, event: Event) -> None:
        """Every logged event, after the view took it: the alert rules follow the workers."""
        self._changed = True
        kind, rank = event.get("type"), event.get("rank")
        if not isinstance(rank, int):
            return
        if kind == EventType.WORKER_STARTED:
            self.alerts.started(rank)
        elif kind == EventType.WORKER_STOPPED and not self._running(rank):  # not a late stop of an older one
            self.alerts.stopped(rank)

    def _running(self, rank: int) -> bool:
        workers = self.view.part("workers")
        assert isinstance(workers, WorkersFold)
        return workers.running(rank)

    def use_alerts(self, settings: AlertSettings) -> None:
        """The job's straggler and stall thresholds (its first node's hello configured it)."""
        self.alerts.settings = settings

    def _decided(self, type: EventType, **fields: Any) -> None:
        """A decision of the alert rules: recorded; a stalled rank's stacks are taken."""
        self.events.emit(type, **fields)
        if type == EventType.RANK_STALLED:
            self.on_stalled(fields["rank"])

    def tick(self, now: float) -> None:
        """The coordinator's tick (``now``: monotonic): the rules, the series, state.json."""
        self.alerts.tick(now)
        wall = time.time()
        if wall - self._flushed_at >= FLUSH_EVERY_S and not self._finished:
            self._flushed_at = wall
            self.view.flush(wall)
        self.write_state()

    def finish(self) -> None:
        """Shutdown: close every open second of the series and persist it; write the last state."""
        if not self._finished:
            self._finished = True
            self.view.close()
        self.write_state(force=True)

    def close(self) -> None:
        """Release the writers (after :meth:`finish`, or when the coordinator never started)."""
        if not self._finished:
            self._finished = True
            self.view.close()
        self.metrics.close()

    # ----------------------------------------------------------------- reads
    def state(self) -> dict[str, Any]:
        """What ``state.json`` and the status op carry: the coordinator and the view's snapshot."""
        return {"coordinator": self.describe(), **self.view.snapshot(), "tensorboard": str(self.metrics.log_dir),
                "written_at": time.time()}

    def pages(self, requested: object) -> dict[str, Any]:
        """``{"PART/KIND": page}`` for a status op's ``pages``: a list of ``{"part", "kind",
        "offset", "limit"}`` (limit at most :data:`MAX_PAGE`); ``ViewQueryError`` names what is wrong."""
        out = {}
        for ask in _asks(requested, "pages", "{part, kind, offset, limit}"):
            offset, limit = ask.get("offset", 0), ask.get("limit", 100)
            if not _count(offset) or not _count(limit) or limit > MAX_PAGE:
                raise ViewQueryError(f"expected an offset >= 0 and a limit of 0..{MAX_PAGE}, got {offset!r} and "
                                     f"{limit!r}", key="pages", expected="offset >= 0, limit <= MAX_PAGE", got=ask)
            part, kind = str(ask.get("part")), str(ask.get("kind"))
            out[f"{part}/{kind}"] = self.view.page(part, kind, offset, limit)
        return out

    def points(self, requested: object) -> list[dict[str, Any]]:
        """The points of each series a status op's ``points`` asks for, in its order: a list of at
        most :data:`MAX_SERIES` ``{"part", "subject", "measure", "level"}`` (measure "" and level 0
        by default); ``ViewQueryError`` names what is wrong (also a series the view does not hold)."""
        asks = _asks(requested, "points", "{part, subject, measure, level}")
        if len(asks) > MAX_SERIES:
            raise ViewQueryError(f"expected at most {MAX_SERIES} series, got {len(asks)}", key="points",
                                 expected=f"<= {MAX_SERIES} series", got=len(asks))
        out = []
        for ask in asks:
            part, subject, measure, level = (ask.get("part"), ask.get("subject"), ask.get("measure", ""),
                                             ask.get("level", 0))
            if not all(isinstance(v, str) for v in (part, subject, measure)) or not _count(level):
                raise ViewQueryError(f"expected text part, subject and measure and a level >= 0, got {ask!r}",
                                     key="points", expected="{part: str, subject: str, measure: str, level: int}",
                                     got=ask)
            out.append(self.view.points(part, subject, measure, level))
        return out

    # ----------------------------------------------------------------- state
    def write_state(self, force: bool = False) -> None:
        """Snapshot on the loop (the view is only consistent there), write in the background: at
        a thousand ranks a write takes milliseconds the loop must not stall for."""
        now = time.monotonic()
        due = self._changed and now - self._written_at >= self.state_write_interval()
        busy = self._write is not None and not self._write.done()
        if not force and (not due or busy):
            return
        self._changed = False
        self._written_at = now
        cpu = time.thread_time()  # the loop's CPU, not its wall time: a preempted snapshot is not a large one
        text = json.dumps(self.state(), separators=(",", ":"), default=str)
        self._state_cost = time.thread_time() - cpu
        if force:
            if busy:
                assert self._write is not None
                self._write.result()
            self._write_file(text)
            return
        try:
            self._write = self.writer.submit(self._write_file, text)
        except RuntimeError:  # the executor is gone (the interpreter is exiting): write here
            self._write_file(text)

    def state_write_interval(self) -> float:
        """Seconds between two state.json snapshots now: ``state_interval``, or longer when the last
        snapshot took more than :data:`STATE_SHARE` of that (see the module docstring)."""
        return max(self.state_interval, min(self._state_cost / STATE_SHARE, MAX_STATE_INTERVAL_S))

    def _write_file(self, text: str) -> None:
        """Replace state.json; a failure (disk full) is reported and the state written again later."""
        try:
            write_text_atomic(self.run_dir / STATE_FILE, text)
        except OSError as e:
            self._changed = True
            self.health.failed(STATE_FILE, e)
        else:
            self.health.succeeded(STATE_FILE)


def _asks(requested: object, key: str, shape: str) -> list[dict[str, Any]]:
    """A status op's list of asks (``pages``, ``points``): absent is none; each must be an object."""
    if requested is None:
        return []
    if not isinstance(requested, list):
        raise ViewQueryError(f"expected a list of {shape}, got {type(requested).__name__}", key=key,
                             expected="a list", got=requested)
    for ask in requested:
        if not isinstance(ask, dict):
            raise ViewQueryError(f"expected {shape}, got {ask!r}", key=key, expected="an object", got=ask)
    return requested


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
