"""Who may do what on the coordinator's control port: the trust decisions, free of any I/O.

Every connection says one hello naming its :class:`~torchrt.contract.Role`; the
coordinator then applies three rules, all decided here so that each is testable
in microseconds (the server only carries the verdicts out):

* **Ops by role.** After its hello a connection may send only the ops of
  :data:`~torchrt.contract.ROLE_OPS` for its role (a second hello is no
  exception): only a *node* changes membership (join, leave, close), a *worker*
  reports telemetry, an *observer* only reads. Anything else is answered with
  ``Code.FORBIDDEN`` (:func:`forbidden`).
* **Reports are reports.** A worker's telemetry may carry only event types of
  origin ``WORKER`` (:data:`~torchrt.contract.WORKER_REPORTS`); the
  coordinator's own decisions (``node_dead``, ``shutdown``, rounds, ...) and
  unknown types are refused. ``rank`` and ``node_id`` are stamped from the
  worker's hello over whatever the report says, and ``seq``/``ts``/``type`` are
  the coordinator's. A ``rank0_only`` type (a checkpoint commit: rank 0 of the
  job commits, see :mod:`torchrt.checkpoint.manager`) is accepted only from
  global rank 0.
* **Only the current round reports.** A worker's hello names the round it was
  started for and its agent's node. Its reports are accepted while that round
  is the current one and the node is one of its participants. Reports of a
  worker of an earlier round that arrive after a newer round formed (its agent
  is about to stop it) are refused like any other: what the old round's workers
  did after the job moved on is not part of the record.

A *node* reports too: its machine and worker processes (``node_stats``,
``node_status``, :mod:`torchrt.telemetry.node`). Its reports may carry only
the types of origin ``NODE`` (:data:`~torchrt.contract.NODE_REPORTS`), with
``node_id`` stamped from the connection's hello (:class:`NodeReportGate`); they
are not tied to a round (a node's machine is worth watching while it waits).
The server takes them only from a connection that is still its node's.

A refused report is not an error of the telemetry op (the worker's reporter
would only log it on every flush): the reply counts accepted and refused
reports, and the first refusal of each type on a connection is recorded as one
``report_refused`` event (:class:`ReportGate`, :class:`NodeReportGate`); a connection can make at most
:data:`MAX_RECORDED_REFUSALS` such records, so junk cannot flood the log.

Tokens are compared as UTF-8 bytes in constant time (:func:`token_matches`), so
any Unicode token works.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchrt.contract import EVENTS, NODE_REPORTS, ROLE_OPS, WORKER_REPORTS, EventType, Op, Origin, Role
from torchrt.coordinator.membership import Round

__all__ = [
    "MAX_RECORDED_REFUSALS",
    "Accepted",
    "FirstRefusals",
    "NodeReportGate",
    "Refused",
    "ReportGate",
    "WorkerIdentity",
    "forbidden",
    "token_matches",
]

MAX_RECORDED_REFUSALS = 32  # distinct refusal records per connection; later refusals are only counted
MAX_REFUSED_TYPE_CHARS = 64  # an unknown type is recorded cut to this length
RESERVED_FIELDS = frozenset({"type", "seq", "ts"})  # the coordinator's, never taken from a report
_WORKER_INFO = tuple(EVENTS[EventType.WORKER_STARTED].fields)  # what a worker's hello may tell
_WHO_RECORDS = {Origin.COORDINATOR: "the coordinator records", Origin.WORKER: "a worker reports",
                Origin.NODE: "a node reports"}


def token_matches(presented: object, expected: str | None) -> bool:
    """Whether a hello's token is the coordinator's: equal UTF-8 bytes, compared in constant time.
    No token and an empty token are the same; a token that is not a string never matches."""
    if presented is not None and not isinstance(presented, str):
        return False
    return hmac.compare_digest((presented or "").encode("utf-8", "surrogatepass"),
                               (expected or "").encode("utf-8", "surrogatepass"))


def forbidden(role: Role, op: Op) -> str | None:
    """Why a connection that said hello as ``role`` may not send ``op``; None when it may."""
    allowed = ROLE_OPS[role]
    if op in allowed:
        return None
    return (f"a {role} connection may not send '{op}' (it may send "
            f"{', '.join(sorted(o.value for o in allowed))})")


class FirstRefusals:
    """Which kinds of refusal one connection has had, so that each is recorded once; at most
    ``limit`` kinds are remembered (and recorded) per connection."""

    def __init__(self, limit: int = MAX_RECORDED_REFUSALS) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def first(self, kind: str) -> bool:
        """True the first time ``kind`` is refused on this connection (while under the limit)."""
        if kind in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(kind)
        return True


@dataclass(frozen=True)
class WorkerIdentity:
    """Who a worker connection is, from its hello: what its reports are stamped with."""

    rank: int
    round: int | None
    node_id: str | None
    info: dict[str, Any] = field(compare=False)  # the hello's fields of ``worker_started``

    @classmethod
    def from_hello(cls, info: object) -> WorkerIdentity:
        """Read a worker hello's ``info``; ``ValueError`` names the field that is wrong."""
        if not isinstance(info, Mapping):
            raise ValueError(f"a worker's hello must carry its 'info' as an object, got {type(info).__name__}")
        rank, round_number, node_id = info.get("rank"), info.get("round"), info.get("node_id")
        if not _is_int(rank) or rank < 0:
            raise ValueError(f"a worker's hello must give its rank as an integer >= 0, got {rank!r}")
        if round_number is not None and not _is_int(round_number):
            raise ValueError(f"a worker's hello must give its round as an integer, got {round_number!r}")
        if node_id is not None and not isinstance(node_id, str):
            raise ValueError(f"a worker's hello must give its node_id as a string, got {node_id!r}")
        return cls(rank, round_number, node_id, {k: info[k] for k in _WORKER_INFO if k in info})


@dataclass(frozen=True)
class Accepted:
    """A report to record: its type and fields, stamped with the reporter's identity (rank, node)."""

    type: EventType
    fields: dict[str, Any]
    ts: float | None  # the report's own time, if it gave one (kept for events that are not logged)


@dataclass(frozen=True)
class Refused:
    """A report that is not recorded, and why."""

    type: str       # the type the report gave (cut to MAX_REFUSED_TYPE_CHARS), or what was wrong with it
    why: str
    rank: int | None  # None: a node's report
    node_id: str | None
    first: bool     # the first refusal of this type on this connection: record a report_refused event

    def record(self) -> dict[str, Any]:
        """The fields of the ``report_refused`` event."""
        return {"rank": self.rank, "node_id": self.node_id, "refused_type": self.type, "why": self.why}


class _Gate:
    """Decides on the reports of one connection: known types of its origin only, stamped with
    ``stamp`` (the connection's identity) over whatever the report says."""

    types: frozenset[EventType]

    def __init__(self, stamp: dict[str, Any]) -> None:
        self.stamp = stamp
        self._refusals = FirstRefusals()

    def admit(self, report: object, current: Round | None) -> Accepted | Refused:
        """Accept ``report`` (one element of a telemetry op's ``events``) or refuse it, given the
        job's ``current`` round (None before the first one formed)."""
        if not isinstance(report, Mapping) or not isinstance(report.get("type"), str):
            return self._refuse("(malformed)", "a report is an object with a string 'type'")
        name = report["type"]
        try:
            type = EventType(name)
        except ValueError:
            return self._refuse(name, "unknown event type")
        why = self._why_not(type, current)
        if why is not None:
            return self._refuse(name, why)
        fields = {k: v for k, v in report.items() if k not in RESERVED_FIELDS}
        fields.update(self.stamp)
        ts = report.get("ts")
        return Accepted(type, fields, float(ts) if _is_number(ts) and math.isfinite(ts) else None)

    def _why_not(self, type: EventType, current: Round | None) -> str | None:
        if type in self.types:
            return None
        origin = EVENTS[type].origin
        return f"a {origin} event: only {_WHO_RECORDS[origin]} it"

    def _refuse(self, type: str, why: str) -> Refused:
        type = type[:MAX_REFUSED_TYPE_CHARS]
        return Refused(type, why, self.stamp.get("rank"), self.stamp.get("node_id"), self._refusals.first(type))


class NodeReportGate(_Gate):
    """Decides on the reports of one node connection (see the module docstring)."""

    types = NODE_REPORTS

    def __init__(self, node_id: str) -> None:
        super().__init__({"node_id": node_id})


class ReportGate(_Gate):
    """Decides on the reports of one worker connection (see the module docstring)."""

    types = WORKER_REPORTS

    def __init__(self, worker: WorkerIdentity) -> None:
        super().__init__({"rank": worker.rank, "node_id": worker.node_id})
        self.worker = worker

    def _why_not(self, type: EventType, current: Round | None) -> str | None:
        worker = self.worker
        if type not in WORKER_REPORTS:
            return super()._why_not(type, current)
        if current is None:
            return "no round has formed yet; only a worker of the current round reports"
        if worker.round != current.number:
            started = "names no round" if worker.round is None else f"was started for round {worker.round}"
            return f"the worker {started}, but the current round is {current.number}"
        if worker.node_id not in current.participants:
            return f"node {worker.node_id!r} is not a participant of round {current.number}"
        if EVENTS[type].rank0_only and worker.rank != 0:
            return f"only rank 0 reports {type} (this worker is rank {worker.rank})"
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
