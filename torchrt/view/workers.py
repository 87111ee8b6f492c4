"""Workers as the record tells them: one row per global rank.

``worker_started`` (a worker said hello: ``torchrt.init``) makes the rank's
row *running* with its node, pid, round and local rank; ``worker_stopped``
(its connection closed: it exited or died, or the coordinator restarted) makes
it *stopped* with the reason, but only when it names the rank's current
process: the stop of an earlier incarnation, arriving late, changes nothing.
Per-rank step telemetry will extend these rows.

The snapshot is a summary at any number of ranks (counts by state, world
size, the newest round, the last :data:`RECENT_STOPS` stops); the rows are a
page (``rows("workers")``, by rank).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from torchrt.contract import EventType
from torchrt.view.fold import JSON, Event

__all__ = ["RECENT_STOPS", "WorkersFold"]

RECENT_STOPS = 8
_STARTED = ("local_rank", "node_id", "pid", "round", "world_size", "local_world_size", "backend")


class WorkersFold:
    """Every rank's worker: running or stopped, where, since when (see the module docstring)."""

    name = "workers"
    types = frozenset({EventType.WORKER_STARTED, EventType.WORKER_STOPPED})
    row_kinds = ("workers",)

    def __init__(self) -> None:
        self.ranks: dict[int, dict[str, Any]] = {}
        self.world_size: int | None = None
        self.round: int | None = None
        self.stops: deque[dict[str, Any]] = deque(maxlen=RECENT_STOPS)

    def apply(self, event: Event) -> bool:
        rank = event.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool):
            return False
        if event.get("type") == EventType.WORKER_STARTED:
            previous = self.ranks.get(rank)
            self.ranks[rank] = {"rank": rank, **{k: event.get(k) for k in _STARTED}, "state": "running",
                                "started_at": event.get("ts"), "stopped_at": None, "reason": None,
                                "starts": (previous["starts"] if previous else 0) + 1}
            if isinstance(event.get("world_size"), int):
                self.world_size = event["world_size"]
            if isinstance(event.get("round"), int):
                self.round = event["round"] if self.round is None else max(self.round, event["round"])
            return True
        row = self.ranks.get(rank)
        if row is None or row["state"] != "running" or event.get("pid") != row["pid"]:
            return True  # a stop of an incarnation that is not the rank's current one
        row.update(state="stopped", stopped_at=event.get("ts"), reason=event.get("reason"))
        self.stops.append({k: row[k] for k in ("rank", "node_id", "pid", "stopped_at", "reason")})
        return True

    def snapshot(self) -> JSON:
        by_state: dict[str, int] = {}
        nodes: set[Any] = set()
        for row in self.ranks.values():
            by_state[row["state"]] = by_state.get(row["state"], 0) + 1
            nodes.add(row["node_id"])
        return {"total": len(self.ranks), "by_state": by_state, "world_size": self.world_size, "round": self.round,
                "nodes": len(nodes), "restarted": sum(1 for row in self.ranks.values() if row["starts"] > 1),
                "recent_stops": list(self.stops)}

    def rows(self, kind: str) -> Sequence[JSON]:
        return [self.ranks[rank] for rank in sorted(self.ranks)]
