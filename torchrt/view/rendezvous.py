"""Nodes and rounds as the record tells them: the rendezvous timeline.

The fold follows :class:`~torchrt.coordinator.membership.Membership` from its
events alone (``node_joined`` .. ``rendezvous_closed``, see docs/events.md),
so it knows the same node states (idle, waiting, active, left, dead) and the
same rank and round per node (a node keeps those of its last round while it
waits or after it died) without the coordinator's objects, live or replayed. On top of that it keeps what a
person asks when a round does not form: which round is pending and why, who
is waiting, who of the current round is *missing* (live participants that
have not asked to rejoin), the restarts that caused it and the nodes that
timed out waiting; and for every round formed, its reason, timings, size,
who was dropped or spare, and who arrived when (``arrivals``: the first
:data:`LISTED` nodes to ask for the round and the last one, the one that
completed it, with their seconds after the round was started).

The snapshot is a summary whatever the number of nodes: counts by state, the
current and pending round with their lists cut at :data:`LISTED` names (with
counts), the last :data:`RECENT_ROUNDS` rounds. The full lists are pages:
``rows("nodes")`` and ``rows("rounds")`` (the last :data:`KEEP_ROUNDS` rounds).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from torchrt.contract import EventType
from torchrt.coordinator.membership import NodeStatus
from torchrt.view.fold import JSON, Event

__all__ = ["KEEP_ROUNDS", "LISTED", "RECENT_ROUNDS", "RendezvousFold"]

LISTED = 16
RECENT_ROUNDS = 5
KEEP_ROUNDS = 500
NODE_INFO = ("hostname", "addr", "pid", "nproc", "device_kind", "device_count", "torch")
ROUND_FIELDS = ("world_size", "reason", "backend", "waiting_s", "last_call_s", "total_s")


def _listed(names: Sequence[str]) -> dict[str, Any]:
    return {"count": len(names), "first": list(names[:LISTED])}


class RendezvousFold:
    """Nodes, the current and the pending round, and the rounds formed (see the module docstring)."""

    name = "rendezvous"
    row_kinds = ("nodes", "rounds")

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.waiting: dict[str, None] = {}  # insertion-ordered set, as in Membership
        self.rounds: deque[dict[str, Any]] = deque(maxlen=KEEP_ROUNDS)
        self.rounds_total = 0
        self.current: dict[str, Any] | None = None
        self.pending: dict[str, Any] | None = None
        self.causes: list[dict[str, Any]] = []  # restarts heard before the round they lead to is started
        self.closed_by: str | None = None
        self.closed = False
        self.shape: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[Event], bool]] = {
            EventType.JOB_CONFIGURED: self._configured,
            EventType.NODE_JOINED: self._joined,
            EventType.NODE_WAITING: self._waiting,
            EventType.NODE_LEFT: self._left,
            EventType.NODE_DEAD: self._dead,
            EventType.RESTART: self._restart,
            EventType.ROUND_STARTED: self._round_started,
            EventType.ROUND_COMPLETED: self._round_completed,
            EventType.ROUND_TIMEOUT: self._timed_out,
            EventType.RENDEZVOUS_CLOSED: self._closed,
        }
        self.types = frozenset(self._handlers)

    def apply(self, event: Event) -> bool:
        handler = self._handlers.get(event.get("type"))  # type: ignore[arg-type]
        return handler is not None and handler(event)

    # ---------------------------------------------------------------- events
    def _configured(self, event: Event) -> bool:
        self.shape = {k: event.get(k) for k in ("min_nodes", "max_nodes")}
        return True

    def _node(self, event: Event) -> dict[str, Any] | None:
        node_id = event.get("node")
        if not isinstance(node_id, str):
            return None
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = {"node_id": node_id, "status": NodeStatus.IDLE.value, "rank": None,
                                          "round": None, "since": event.get("ts"), "reason": None,
                                          "dropped_from": None, "joins": 0}
        return node

    def _set(self, node: dict[str, Any], status: NodeStatus, event: Event, reason: Any = None) -> None:
        node["status"], node["since"], node["reason"] = status.value, event.get("ts"), reason
        if status is NodeStatus.WAITING:
            self.waiting[node["node_id"]] = None
        else:
            self.waiting.pop(node["node_id"], None)

    def _joined(self, event: Event) -> bool:
        node = self._node(event)
        if node is None:
            return False
        node.update({k: event[k] for k in NODE_INFO if k in event})
        node["joins"] += 1
        node["rank"] = node["round"] = node["dropped_from"] = None
        self._set(node, NodeStatus.IDLE, event)
        return True

    def _waiting(self, event: Event) -> bool:
        node = self._node(event)
        if node is None:
            return False
        node["dropped_from"] = None
        self._set(node, NodeStatus.WAITING, event)
        return True

    def _left(self, event: Event) -> bool:
        node = self._node(event)
        if node is None:
            return False
        self._set(node, NodeStatus.LEFT, event, event.get("reason"))
        return True

    def _dead(self, event: Event) -> bool:
        node = self._node(event)
        if node is None:
            return False
        self._set(node, NodeStatus.DEAD, event, event.get("reason"))
        node["silent_s"] = event.get("silent_s")
        return True

    def _timed_out(self, event: Event) -> bool:
        node = self._node(event)
        if node is None:
            return False
        self._set(node, NodeStatus.IDLE, event, "round timeout")
        if self.pending is not None:
            self.pending["timeouts"] += 1
        return True

    def _restart(self, event: Event) -> bool:
        if not isinstance(event.get("node"), str):
            return False
        causes = self.pending["causes"] if self.pending is not None else self.causes
        if len(causes) < LISTED:
            causes.append({k: event.get(k) for k in ("ts", "node", "round", "reason")})
        return True

    def _round_started(self, event: Event) -> bool:
        number = event.get("round")
        if not isinstance(number, int):
            return False
        self.pending = {"round": number, "reason": event.get("reason"), "started_at": event.get("ts"),
                        "causes": self.causes, "timeouts": 0}
        self.causes = []
        return True

    def _round_completed(self, event: Event) -> bool:
        number, participants = event.get("round"), event.get("participants")
        if not isinstance(number, int) or not isinstance(participants, list):
            return False
        pending = self.pending if self.pending is not None and self.pending["round"] == number else None
        record = {"round": number, **{k: event.get(k) for k in ROUND_FIELDS},
                  "arrivals": self._arrivals(participants, pending["started_at"] if pending else None),
                  "participants": [str(p) for p in participants],
                  "dropped": [str(p) for p in event.get("dropped") or ()],
                  "spares": [str(p) for p in event.get("spares") or ()],
                  "started_at": pending["started_at"] if pending else None, "completed_at": event.get("ts"),
                  "causes": pending["causes"] if pending else [], "timeouts": pending["timeouts"] if pending else 0}
        for rank, node_id in enumerate(record["participants"]):
            node = self._node({"node": node_id, "ts": event.get("ts")})
            assert node is not None
            self._set(node, NodeStatus.ACTIVE, event)
            node["rank"], node["round"], node["dropped_from"] = rank, number, None
        for node_id in record["dropped"]:
            node = self._node({"node": node_id, "ts": event.get("ts")})
            assert node is not None
            self._set(node, NodeStatus.IDLE, event, "dropped")
            node["rank"], node["round"], node["dropped_from"] = None, None, number
        self.current, self.pending = record, None
        self.rounds.append(record)
        self.rounds_total += 1
        return True

    def _arrivals(self, participants: list[Any], started_at: Any) -> dict[str, Any]:
        """When the round's participants asked for it (they are waiting, since then), in order. A
        node already waiting when the round started (its join started it, and was stamped a moment
        before the start) arrived at the start: 0, never a time before it."""
        waited = sorted((node["since"], node["node_id"]) for p in participants
                        if (node := self.nodes.get(str(p))) is not None and node["status"] == NodeStatus.WAITING.value
                        and isinstance(node["since"], (int, float)))
        base = started_at if isinstance(started_at, (int, float)) else (waited[0][0] if waited else None)

        def arrival(since: float, node_id: str) -> dict[str, Any]:
            return {"node": node_id, "after_s": round(max(since - base, 0.0), 6) if base is not None else None}

        return {"count": len(waited), "first": [arrival(*w) for w in waited[:LISTED]],
                "last": arrival(*waited[-1]) if waited else None}

    def _closed(self, event: Event) -> bool:
        self.closed, self.closed_by = True, event.get("by")
        for node_id in list(self.waiting):
            self._set(self.nodes[node_id], NodeStatus.IDLE, event, "rendezvous closed")
        self.pending = None
        return True

    # ----------------------------------------------------------------- views
    def missing(self) -> list[str]:
        """Live participants of the current round that have not asked for the pending one yet."""
        if self.current is None or self.pending is None:
            return []
        number = self.current["round"]
        return [p for p in self.current["participants"]
                if self.nodes[p]["status"] == NodeStatus.ACTIVE.value and self.nodes[p]["round"] == number]

    def snapshot(self) -> JSON:
        by_status: dict[str, int] = {}
        for node in self.nodes.values():
            by_status[node["status"]] = by_status.get(node["status"], 0) + 1
        pending = None
        if self.pending is not None:
            pending = {k: v for k, v in self.pending.items() if k != "causes"}
            pending.update(causes=self.pending["causes"][:LISTED], waiting=_listed(list(self.waiting)),
                           missing=_listed(self.missing()))
        return {"closed": self.closed, "closed_by": self.closed_by, **self.shape,
                "nodes": {"total": len(self.nodes), "by_status": by_status},
                "waiting": _listed(list(self.waiting)),
                "current": _round_summary(self.current) if self.current else None,
                "pending": pending, "rounds_total": self.rounds_total,
                "recent_rounds": [_round_summary(r) for r in list(self.rounds)[-RECENT_ROUNDS:]]}

    def rows(self, kind: str) -> Sequence[JSON]:
        return list(self.nodes.values()) if kind == "nodes" else list(self.rounds)


def _round_summary(record: dict[str, Any]) -> dict[str, Any]:
    summary = {k: v for k, v in record.items() if k not in ("participants", "dropped", "spares", "causes")}
    summary.update(participants=_listed(record["participants"]), dropped=_listed(record["dropped"]),
                   spares=_listed(record["spares"]), causes=record["causes"][:LISTED])
    return summary
