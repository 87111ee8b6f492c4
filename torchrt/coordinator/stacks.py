"""Stack dumps at the coordinator: who was asked, what each rank answered, when a dump is done.

A dump starts with a ``dump_stacks`` op (an operator's request) or from the
coordinator itself (a ``rank_stalled`` alert). :class:`StackDumps` decides
whom to ask and keeps the bookkeeping; the server only carries its verdicts
out (pushes ``dump_stacks`` to the connections it names, writes the finished
dump, records the event, answers the requester). Pure logic: times are passed
in, connections are opaque keys (the server's peer objects).

* **Whom to ask.** Every worker connection says its rank, round and world size
  in its hello (:meth:`StackDumps.connected`). A dump of every rank asks each
  rank of the current round: those connected now, those that connected and
  went, and every rank below the round's world size. One rank is asked alone.
  A rank without a live connection is answered at once: ``gone`` when it is a
  rank of the round (it connected and went, or never came), ``unknown`` when
  the round has no such rank.
* **Answers.** A worker's ``stacks`` message is matched by its ``request`` and
  taken only from the very connection that was asked, under the rank of that
  connection's hello, never a rank the message names; a late answer, or one to
  a request that is not pending, is dropped. An answer with an ``error`` is
  ``error``; one without a ``threads`` list is ``error`` too (malformed).
* **The end.** A dump is done when every rank asked has its entry: answered,
  gone (its connection ended while the dump waited) or, at the dump's
  deadline, ``no_answer``.

Dumps are numbered across coordinator restarts: the first number is one past
the largest ``RUN_DIR/stacks/<N>.json`` (:func:`next_request_number`). The
dump a finished :class:`Dump` writes is the format of
:mod:`torchrt.view.stacks`; :meth:`Dump.reply` keeps one copy of each group's
stacks (:func:`torchrt.view.stacks.compact`) and, over
:data:`MAX_REPLY_BYTES`, only the path and a summary.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Hashable, Mapping
from pathlib import Path
from typing import Any

from torchrt.contract import STACK_DUMP_TIMEOUT_S, StackAnswer
from torchrt.view.stacks import compact, group_stacks, summary

__all__ = [
    "MAX_REPLY_BYTES",
    "MAX_TIMEOUT_S",
    "REQUESTED",
    "STACKS_DIR",
    "Dump",
    "StackDumps",
    "next_request_number",
]

STACKS_DIR = "stacks"               # RUN_DIR/stacks/<request>.json
REQUESTED = "requested"             # the reason of a dump an operator asked for
MAX_TIMEOUT_S = 60.0                # the longest a dump may wait for its ranks
MAX_REPLY_BYTES = 4 * 1024 * 1024   # a larger dump is answered with its path and a summary only
KEPT_ROUNDS = 4                     # rounds whose ranks are remembered (for "gone")
_ANSWER_SKIP = frozenset({"op", "id", "request", "rank"})  # the entry's rank is the connection's


def next_request_number(directory: Path) -> int:
    """One past the largest ``<N>.json`` in ``directory`` (1 when there is none)."""
    try:
        names = [p.stem for p in Path(directory).iterdir() if p.suffix == ".json"]
    except FileNotFoundError:
        return 1
    return max((int(n) for n in names if n.isascii() and n.isdigit()), default=0) + 1


@dataclasses.dataclass
class Dump:
    """One dump: its ranks' entries so far and the connections still to answer."""

    request: int
    reason: str
    timeout_s: float
    ts: float                     # wall-clock start (Unix seconds), for the record
    started: float                # monotonic start
    entries: dict[int, dict[str, Any]]
    waiting: dict[int, Hashable]  # rank -> the connection asked
    requester: Any = None         # the server's: whom to answer when done

    @property
    def done(self) -> bool:
        return not self.waiting

    @property
    def path(self) -> str:
        """The dump's file, relative to the run directory."""
        return f"{STACKS_DIR}/{self.request}.json"

    def record(self) -> dict[str, Any]:
        """What ``RUN_DIR/stacks/<request>.json`` holds (see :mod:`torchrt.view.stacks`)."""
        return {"request": self.request, "ts": self.ts, "reason": self.reason, "timeout_s": self.timeout_s,
                "ranks": {str(rank): self.entries[rank] for rank in sorted(self.entries)}}

    def summary(self) -> dict[str, Any]:
        """The fields of the ``stacks_dumped`` event."""
        missing: dict[str, list[int]] = {}
        for rank in sorted(self.entries):
            answer = self.entries[rank]["answer"]
            if answer != StackAnswer.ANSWERED:
                missing.setdefault(str(answer), []).append(rank)
        answered = [r for r in sorted(self.entries) if self.entries[r]["answer"] == StackAnswer.ANSWERED]
        times = [self.entries[r]["after_s"] for r in answered]
        return {"request": self.request, "reason": self.reason, "path": self.path, "ranks": sorted(self.entries),
                "answered": answered, "missing": missing, "slowest_s": max(times) if times else None}

    def reply(self, path: str | None) -> dict[str, Any]:
        """The fields of the ``dump_stacks`` reply: the dump with one copy of each group's stacks,
        or, when that exceeds MAX_REPLY_BYTES, its summary line and ``truncated``."""
        record = self.record()
        dump = {**record, "ranks": compact(record["ranks"])}
        if len(json.dumps(dump, separators=(",", ":"))) <= MAX_REPLY_BYTES:
            return {"request": self.request, "path": path, "dump": dump}
        return {**self.summary(), "path": path, "truncated": True,
                "summary": summary(group_stacks(record["ranks"]))}

    def settle(self, rank: int, answer: StackAnswer, now: float, fields: Mapping[str, Any] | None = None) -> None:
        """Enter ``rank``'s answer (with the worker's ``fields``), ``now`` being when it came."""
        self.waiting.pop(rank, None)
        self.entries[rank] = {**(fields or {}), "answer": answer.value,
                              "after_s": round(max(0.0, now - self.started), 4)}


@dataclasses.dataclass
class _Worker:
    rank: int
    round: int | None


class StackDumps:
    """The coordinator's pending dumps and the worker connections they may ask (module docstring)."""

    def __init__(self, first_request: int = 1) -> None:
        self._next = first_request
        self._pending: dict[int, Dump] = {}
        self._live: dict[Hashable, _Worker] = {}
        self._rounds: dict[int | None, tuple[set[int], int]] = {}  # round -> (ranks seen, world size)

    @property
    def pending(self) -> Mapping[int, Dump]:
        return self._pending

    # ------------------------------------------------------------ workers
    def connected(self, connection: Hashable, rank: int, round_number: int | None, world_size: object) -> None:
        """A worker connection said hello as ``rank`` of ``round_number`` (of ``world_size`` ranks)."""
        self._live[connection] = _Worker(rank, round_number)
        seen, size = self._rounds.pop(round_number, (set(), 0))
        seen.add(rank)
        if isinstance(world_size, int) and not isinstance(world_size, bool):
            size = max(size, world_size)
        self._rounds[round_number] = (seen, size)  # newest last
        while len(self._rounds) > KEPT_ROUNDS:
            del self._rounds[next(iter(self._rounds))]

    def disconnected(self, connection: Hashable, now: float) -> list[Dump]:
        """The connection ended: the dumps waiting on it record its rank as gone; those now done."""
        worker = self._live.pop(connection, None)
        if worker is None:
            return []
        finished = []
        for dump in list(self._pending.values()):
            if dump.waiting.get(worker.rank) is connection:
                dump.settle(worker.rank, StackAnswer.GONE, now)
                if dump.done:
                    finished.append(self._pending.pop(dump.request))
        return finished

    # -------------------------------------------------------------- dumps
    def begin(self, ranks: Collection[int] | None, round_number: int | None, reason: str, now: float,
              wall: float, timeout_s: float = STACK_DUMP_TIMEOUT_S, requester: Any = None) -> Dump:
        """Start a dump of ``ranks`` (None: every rank) of ``round_number``, the current round.
        The connections to ask are the returned dump's ``waiting``; a rank none of them is has
        its entry already. The dump may be done at once (no live rank asked)."""
        live = {w.rank: c for c, w in self._live.items() if w.round == round_number}
        seen, size = self._rounds.get(round_number, (set(), 0))
        targets = set(live) | seen | set(range(size)) if ranks is None else set(ranks)
        dump = Dump(self._next, reason, timeout_s, wall, now, {}, {}, requester)
        self._next += 1
        for rank in sorted(targets):
            if rank in live:
                dump.waiting[rank] = live[rank]
            else:
                gone = rank in seen or 0 <= rank < size
                dump.settle(rank, StackAnswer.GONE if gone else StackAnswer.UNKNOWN, now)
        if not dump.done:
            self._pending[dump.request] = dump
        return dump

    def answer(self, connection: Hashable, message: Mapping[str, Any], now: float) -> Dump | None:
        """A worker's ``stacks`` message; the dump it completes, if any. Answers from a connection
        that was not asked, late ones and those to no pending request are dropped."""
        worker, request = self._live.get(connection), message.get("request")
        dump = self._pending.get(request) if isinstance(request, int) else None
        if worker is None or dump is None or dump.waiting.get(worker.rank) is not connection:
            return None
        fields = {k: v for k, v in message.items() if k not in _ANSWER_SKIP}
        if isinstance(fields.get("threads"), list):
            dump.settle(worker.rank, StackAnswer.ANSWERED, now, fields)
        else:
            error = fields.get("error")
            why = str(error)[:500] if error is not None else \
                f"malformed answer: expected 'threads' as a list, got {type(fields.get('threads')).__name__}"
            dump.settle(worker.rank, StackAnswer.ERROR, now, {"pid": fields.get("pid"), "error": why})
        return self._pending.pop(dump.request) if dump.done else None

    def expire(self, now: float) -> list[Dump]:
        """Dumps past their timeout, done: the ranks that did not answer are ``no_answer``."""
        finished = []
        for dump in list(self._pending.values()):
            if now - dump.started >= dump.timeout_s:
                for rank in list(dump.waiting):
                    dump.settle(rank, StackAnswer.NO_ANSWER, now)
                finished.append(self._pending.pop(dump.request))
        return finished
