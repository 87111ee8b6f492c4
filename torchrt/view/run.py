"""The run itself: its id and shape, the coordinators that served it, how it ended.

From ``coordinator_started`` (endpoint, pid), ``coordinator_restarted`` (an
earlier coordinator's record goes on), ``job_configured`` (the job's shape and
timings, fixed by the first node) and ``shutdown``. A run is *running* from a
coordinator's start to its shutdown; a run whose last coordinator never
recorded a shutdown reads as running until another one starts (replaying a
crashed run shows that).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from torchrt.contract import EventType
from torchrt.view.fold import JSON, Event, fields_of

__all__ = ["RunFold"]

KEEP_RESTARTS = 20


class RunFold:
    """Run id, settings, coordinator incarnations and shutdown (see the module docstring)."""

    name = "run"
    types = frozenset({EventType.COORDINATOR_STARTED, EventType.COORDINATOR_RESTARTED, EventType.JOB_CONFIGURED,
                       EventType.SHUTDOWN})

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.settings: dict[str, Any] | None = None
        self.coordinator: dict[str, Any] | None = None
        self.incarnations = 0
        self.restarts: deque[dict[str, Any]] = deque(maxlen=KEEP_RESTARTS)
        self.shutdown: dict[str, Any] | None = None
        self.started_at: float | None = None

    def apply(self, event: Event) -> bool:
        kind, ts = event.get("type"), event.get("ts")
        if kind == EventType.COORDINATOR_STARTED:
            self.incarnations += 1
            self.coordinator = {**fields_of(event, ("run_id",)), "started_at": ts}
            self.shutdown = None
            if self.started_at is None:
                self.started_at = ts
        elif kind == EventType.COORDINATOR_RESTARTED:
            self.restarts.append({**fields_of(event), "at": ts})
        elif kind == EventType.JOB_CONFIGURED:
            self.settings = fields_of(event, ("run_id",))
        else:
            self.shutdown = {"reason": event.get("reason"), "at": ts}
        run_id = event.get("run_id")
        if isinstance(run_id, str):
            self.run_id = run_id
        return True

    def snapshot(self) -> JSON:
        return {"run_id": self.run_id, "settings": self.settings, "started_at": self.started_at,
                "coordinator": self.coordinator, "incarnations": self.incarnations,
                "restarts": list(self.restarts), "running": self.coordinator is not None and self.shutdown is None,
                "shutdown": self.shutdown}
