"""Membership and rounds: the coordinator's decision logic, free of any I/O.

A *round* is one formed worker group: an ordered list of participating nodes,
a number that every participant agrees on (the job's restart generation) and
the bootstrap address the workers use to build their process group.

Nodes move through these states::

    idle ──join──▶ waiting ──round completes──▶ active ──join again──▶ waiting
      ▲                                           │
      └───────── dropped from a newer round ◀─────┘
    any ──heartbeat timeout / connection lost──▶ dead      any ──shutdown──▶ left

A new round is *needed* when there is none yet, when a participant of the
current round died or came back asking for a new one (its agent restarted its
workers), or when nodes wait while the current round has room for them. It
then *completes* as soon as:

* ``max_nodes`` nodes wait, or
* at least ``min_nodes`` wait and every live participant of the current round
  is among them (a re-form: nobody else is expected, so no delay at all), or
* at least ``min_nodes`` wait and the last call has run out: ``last_call_timeout``
  for the first round (who else is coming is unknown), ``rejoin_timeout`` for a
  re-form that still misses live participants.

This is evaluated after every event, so a decision follows the last required
join immediately instead of on a polling tick. The class never reads the clock
itself: callers pass ``now``, which makes every rule testable in microseconds.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchrt.contract import JOB_DEFAULTS, EventType

logger = logging.getLogger(__name__)

EventSink = Callable[..., None]


class NodeStatus(str, enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    ACTIVE = "active"
    LEFT = "left"
    DEAD = "dead"


ALIVE = (NodeStatus.IDLE, NodeStatus.WAITING, NodeStatus.ACTIVE)


@dataclass(frozen=True)
class RoundSettings:
    min_nodes: int
    max_nodes: int
    last_call_timeout: float = JOB_DEFAULTS.last_call_timeout
    rejoin_timeout: float = JOB_DEFAULTS.rejoin_timeout
    join_timeout: float = JOB_DEFAULTS.join_timeout
    backend: str = JOB_DEFAULTS.backend


@dataclass
class Node:
    node_id: str
    info: dict[str, Any]
    status: NodeStatus = NodeStatus.IDLE
    last_seen: float = 0.0
    waiting_since: float | None = None
    master_port: int | None = None
    rank: int | None = None
    round: int | None = None
    dropped_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "status": self.status.value,
            "rank": self.rank,
            "round": self.round,
            "last_seen": self.last_seen,
            "waiting_since": self.waiting_since,
            "dropped_from": self.dropped_from,
            "info": self.info,
        }


@dataclass(frozen=True)
class Round:
    number: int
    participants: tuple[str, ...]
    master_addr: str
    master_port: int
    backend: str
    reason: str
    opened_at: float
    completed_at: float

    @property
    def world_size(self) -> int:
        return len(self.participants)

    def rank_of(self, node_id: str) -> int:
        return self.participants.index(node_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "participants": list(self.participants),
            "world_size": self.world_size,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "backend": self.backend,
            "reason": self.reason,
            "opened_at": self.opened_at,
            "completed_at": self.completed_at,
        }


@dataclass
class _Pending:
    """Why the next round is needed and since when."""

    reason: str
    opened_at: float
    min_reached_at: float | None = None


@dataclass
class Membership:
    """All nodes of one run and the rounds they formed."""

    settings: RoundSettings
    emit: EventSink
    nodes: dict[str, Node] = field(default_factory=dict)
    current: Round | None = None
    # The highest round number already used in this run's record (by an earlier coordinator on
    # the same run directory): round numbers go on after it.
    previous_round: int = 0
    closed: bool = False
    backend: str | None = None
    _pending: _Pending | None = None
    _waiting: dict[str, None] = field(default_factory=dict)  # insertion-ordered set

    # ----------------------------------------------------------------- inputs
    def connect(self, node_id: str, info: dict[str, Any], now: float) -> Node:
        """Register a node (or bring a dead or departed one back as idle)."""
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = Node(node_id, info, last_seen=now)
            self.emit(EventType.NODE_JOINED, node=node_id, **_public_info(info))
        elif node.status not in ALIVE:
            node.info, node.rank, node.round = info, None, None
            self._set_status(node, NodeStatus.IDLE)
            self.emit(EventType.NODE_JOINED, node=node_id, returning=True, **_public_info(info))
        node.last_seen = now
        return node

    def join(self, node_id: str, master_port: int, now: float, cause: str | None = None) -> None:
        """The node asks to be part of the next round (``cause``: why, as the node sees it)."""
        node = self.nodes[node_id]
        node.last_seen = now
        node.master_port = master_port
        if node.status == NodeStatus.WAITING:
            return
        was_active = node.status == NodeStatus.ACTIVE and self.current is not None
        node.waiting_since, node.dropped_from = now, None
        self._set_status(node, NodeStatus.WAITING)
        self.emit(EventType.NODE_WAITING, node=node_id, round=self.current.number if self.current else 0)
        if was_active:
            self.emit(EventType.RESTART, node=node_id, round=self.current.number,
                      reason=cause or "node asked for a new round")
            self._need_round(f"{node_id} restarted its workers ({cause or 'no cause given'})", now)
        elif self.current is None:
            self._need_round("initial", now)
        elif self.current.world_size < self.settings.max_nodes:
            self._need_round(f"scale-up: {node_id} is waiting", now)
        self._note_min_reached(now)

    def leave(self, node_id: str, now: float, reason: str | None = None) -> None:
        """Graceful departure (agent shutdown, or the job is being stopped: ``reason``).
        Does not trigger a re-form by itself."""
        node = self.nodes.get(node_id)
        if node is None or node.status not in ALIVE:
            return
        node.last_seen, node.waiting_since = now, None
        self._set_status(node, NodeStatus.LEFT)
        self.emit(EventType.NODE_LEFT, node=node_id, **({"reason": reason} if reason else {}))

    def fail(self, node_id: str, reason: str, now: float) -> None:
        """Declare a node dead; survivors re-form if it was a participant."""
        node = self.nodes.get(node_id)
        if node is None or node.status not in ALIVE:
            return
        was_active = node.status == NodeStatus.ACTIVE
        node.waiting_since = None
        self._set_status(node, NodeStatus.DEAD)
        self.emit(EventType.NODE_DEAD, node=node_id, reason=reason,
                  silent_s=round(now - node.last_seen, 3))
        if was_active and self.current is not None and node_id in self.current.participants:
            self._need_round(f"{node_id} died ({reason})", now)

    def heartbeat(self, node_id: str, now: float) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.last_seen = now

    def close(self, by: str | None, now: float) -> list[str]:
        """Close the rendezvous; returns the nodes whose join must now fail."""
        if self.closed:
            return []
        self.closed = True
        self._pending = None
        self.emit(EventType.RENDEZVOUS_CLOSED, by=by)
        waiting = list(self._waiting)
        for node_id in waiting:
            self._set_status(self.nodes[node_id], NodeStatus.IDLE)
        return waiting

    # --------------------------------------------------------------- decisions
    def expire(self, heartbeat_timeout: float, now: float) -> list[str]:
        """Declare dead every live node silent for longer than ``heartbeat_timeout``."""
        silent = [
            n.node_id for n in self.nodes.values()
            if n.status in ALIVE and now - n.last_seen > heartbeat_timeout
        ]
        for node_id in silent:
            self.fail(node_id, f"no heartbeat for {heartbeat_timeout:g}s", now)
        return silent

    def timed_out_joins(self, now: float) -> list[str]:
        """Waiting nodes past ``join_timeout``; they go back to idle."""
        late = [
            node_id for node_id in self._waiting
            if now - _or(self.nodes[node_id].waiting_since, now) > self.settings.join_timeout
        ]
        for node_id in late:
            self._set_status(self.nodes[node_id], NodeStatus.IDLE)
            self.emit(EventType.ROUND_TIMEOUT, node=node_id, waited_s=self.settings.join_timeout,
                      waiting=self.waiting_count(), min_nodes=self.settings.min_nodes)
        return late

    def poll(self, now: float) -> Round | None:
        """Complete the next round if its conditions hold now."""
        pending = self._pending
        if pending is None or self.closed:
            return None
        count = len(self._waiting)
        if count < self.settings.min_nodes:
            pending.min_reached_at = None
            return None
        self._note_min_reached(now)
        if count < self.settings.max_nodes:
            outstanding = self.outstanding_participants()
            if (self.current is None or outstanding) and now < self._deadline(pending, outstanding):
                return None
        return self._complete(self._waiting_in_order(), now)

    def next_deadline(self) -> float | None:
        """When ``poll`` may next change its answer without any new input."""
        pending = self._pending
        if pending is None or pending.min_reached_at is None:
            return None
        return self._deadline(pending, self.outstanding_participants())

    # ----------------------------------------------------------------- queries
    def waiting_count(self) -> int:
        return len(self._waiting)

    def next_round_needed(self) -> bool:
        return self._pending is not None

    def outstanding_participants(self) -> list[str]:
        """Live participants of the current round that have not asked to rejoin yet."""
        if self.current is None:
            return []
        return [
            p for p in self.current.participants
            if self.nodes[p].status == NodeStatus.ACTIVE and self.nodes[p].round == self.current.number
        ]

    def restart_hint(self, node_id: str) -> int:
        """What ``num_nodes_waiting()`` should answer on ``node_id``.

        Positive means: stop your workers and rejoin. Participants of the current
        round get it while a new round is needed; nodes dropped from a round
        (idle while a round runs) get it so they come back.
        """
        node = self.nodes.get(node_id)
        if node is None or self.closed:
            return 0
        if node.status == NodeStatus.ACTIVE and self._pending is not None:
            return max(1, self.waiting_count())
        if node.status == NodeStatus.IDLE and node.dropped_from is not None:
            return 1
        return 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "closed": self.closed,
            "backend": self.backend,
            "settings": vars(self.settings),
            "round": self.current.to_json() if self.current else None,
            "pending": None if self._pending is None else {
                "reason": self._pending.reason,
                "opened_at": self._pending.opened_at,
                "waiting": self.waiting_count(),
            },
            "nodes": [n.to_json() for n in self.nodes.values()],
        }

    # ---------------------------------------------------------------- helpers
    def _round_number(self) -> int:
        """The number of the current round (or the last one used before this coordinator)."""
        return self.current.number if self.current else self.previous_round

    def _set_status(self, node: Node, status: NodeStatus) -> None:
        node.status = status
        if status == NodeStatus.WAITING:
            self._waiting[node.node_id] = None
        else:
            self._waiting.pop(node.node_id, None)

    def _need_round(self, reason: str, now: float) -> None:
        if self._pending is None and not self.closed:
            self._pending = _Pending(reason, now)
            self.emit(EventType.ROUND_STARTED, round=self._round_number() + 1,
                      reason=reason)
            self._note_min_reached(now)

    def _note_min_reached(self, now: float) -> None:
        pending = self._pending
        if pending is not None and pending.min_reached_at is None \
                and len(self._waiting) >= self.settings.min_nodes:
            pending.min_reached_at = now

    def _deadline(self, pending: _Pending, outstanding: list[str]) -> float:
        assert pending.min_reached_at is not None
        wait = self.settings.last_call_timeout if self.current is None or not outstanding \
            else max(self.settings.last_call_timeout, self.settings.rejoin_timeout)
        return pending.min_reached_at + wait

    def _waiting_in_order(self) -> list[Node]:
        previous = self.current.participants if self.current else ()
        waiting = [self.nodes[node_id] for node_id in self._waiting]
        return sorted(waiting, key=lambda n: (
            n.node_id not in previous,
            previous.index(n.node_id) if n.node_id in previous else 0,
            _or(n.waiting_since, 0.0),
        ))

    def _choose_backend(self, chosen: list[Node]) -> str:
        if self.backend is None:
            wanted = self.settings.backend
            if wanted == "auto":
                wanted = "nccl" if _every_worker_has_a_gpu(chosen) else "gloo"
            self.backend = wanted
        return self.backend

    def _complete(self, waiting: list[Node], now: float) -> Round:
        pending = self._pending
        assert pending is not None
        chosen = waiting[: self.settings.max_nodes]
        number = self._round_number() + 1
        previous = set(self.current.participants) if self.current else set()
        host = chosen[0]
        new_round = Round(
            number=number,
            participants=tuple(n.node_id for n in chosen),
            master_addr=str(host.info.get("addr", "127.0.0.1")),
            master_port=int(host.master_port or 0),
            backend=self._choose_backend(chosen),
            reason=pending.reason,
            opened_at=pending.opened_at,
            completed_at=now,
        )
        for rank, node in enumerate(chosen):
            node.rank, node.round, node.waiting_since = rank, number, None
            self._set_status(node, NodeStatus.ACTIVE)
        dropped = [p for p in previous if p not in new_round.participants
                   and self.nodes[p].status == NodeStatus.ACTIVE]
        for node_id in dropped:
            node = self.nodes[node_id]
            node.rank, node.round, node.dropped_from = None, None, number
            self._set_status(node, NodeStatus.IDLE)
        self.current, self._pending = new_round, None
        self.emit(
            EventType.ROUND_COMPLETED, round=number, world_size=new_round.world_size,
            participants=list(new_round.participants), reason=pending.reason,
            backend=new_round.backend, dropped=dropped,
            spares=[n.node_id for n in waiting[self.settings.max_nodes:]],
            waiting_s=round((pending.min_reached_at or now) - pending.opened_at, 6),
            last_call_s=round(now - (pending.min_reached_at or now), 6),
            total_s=round(now - pending.opened_at, 6),
        )
        return new_round


def _public_info(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("hostname", "addr", "pid", "nproc", "device_kind", "device_count", "torch")
    return {k: info.get(k) for k in keys if k in info}


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _every_worker_has_a_gpu(chosen: list[Node]) -> bool:
    """Whether NCCL can give every worker a CUDA device of its own: every node has CUDA with at least
    as many devices as it starts workers (``nproc``; one when unknown), and no two nodes share a host
    (each agent numbers its workers' devices from ``cuda:0``)."""
    hosts = [n.info.get("hostname") for n in chosen]
    if None not in hosts and len(set(hosts)) < len(hosts):
        return False
    return all(n.info.get("device_kind") == "cuda" and _count(n.info.get("device_count"), 0) >=
               _count(n.info.get("nproc"), 1) for n in chosen)


def _count(value: object, default: int) -> int:
    """A count a node said in its hello, or ``default`` when it said none (or not a number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
