"""The Logs page's query: the run's event log, newest first, filtered and paged, in bounded memory.

An :class:`EventQuery` is what ``GET /api/v1/events`` asks (:meth:`EventQuery.parse` validates
every parameter and names the key at fault): event ``type`` (a comma-separated list of the
contract's types), ``level`` (``error`` / ``warning`` / ``info``: the contract's
:data:`~torchrt.contract.EVENT_LEVELS`, defined once there), ``node``, ``rank``, a text search
``q`` (case-insensitive, over the type and every value of the event), paging by ``before=SEQ``
(events with a smaller ``seq``) and ``limit`` (at most :data:`MAX_LIMIT`); ``until`` (the
replay slider's time) and ``since`` bound the events' ``ts`` (the timeline's window).

:class:`EventIndex` answers it from two places:

* the run directory's ``events.jsonl`` when it can be read (a replay, or a live coordinator on
  this machine: it appends every event as it records it). Nothing of the file stays in memory
  but a *sparse index*: every :data:`STRIDE`-th line's ``(seq, byte offset, ts)`` and the count of
  each event type, extended from where it stopped at each query (only the new bytes are read,
  and only each line's ``seq``/``ts``/``type`` head is parsed). A query jumps to the indexed line
  at or after ``before`` (or the slider's time) and reads the file *backwards* from there,
  checking each line first on its raw bytes (type, text) and parsing only those that may match;
  it stops at ``limit`` matches or after :data:`SCAN_BUDGET_BYTES` read, and ``next_before`` says
  where the next page starts either way (``partial`` when the budget, not the limit, ended it). A
  week of a thousand ranks' events is an index of a few MB;
* the events pushed live since (``add``), at most :data:`RECENT`: those past the file's last line
  (its writer fell behind: a full disk), or all of them when there is no readable run directory
  (then the log is the coordinator's recent events and what was pushed since).

``total`` is exact when the answer can be counted from the index (no ``node``, ``rank``, ``q``,
``before`` or ``until``), else ``null``.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from torchrt.contract import EventType, Level
from torchrt.coordinator.run_dir import EVENTS_FILE

from monitor.errors import QueryError
from monitor.sentences import level_of, presented

__all__ = ["DEFAULT_LIMIT", "EventIndex", "EventQuery", "MAX_LIMIT", "MAX_TEXT", "RECENT", "int_arg", "number_arg",
           "text_arg"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_TEXT = 200                 # longest node name or search text
STRIDE = 256                   # one indexed line in this many
SCAN_BUDGET_BYTES = 32 << 20   # the most one query reads of the file
RECENT = 2000                  # pushed events kept
CHUNK = 1 << 16
Event = dict[str, Any]
# The head of a line as torchrt.coordinator.run_dir.EventLog writes it (compact JSON, seq, ts, type first).
_HEAD = re.compile(rb'\{"seq":(\d+),"ts":([-+0-9.eE]+),"type":"([^"\\]*)"')
_PLAIN = re.compile(r"[ -~]*")  # printable ASCII: searchable in the raw line as it is
_QUOTE_FREE = re.compile(r'[^"\\]*')
_TYPES = frozenset(t.value for t in EventType)


@dataclasses.dataclass(frozen=True)
class EventQuery:
    """One query of the log (see the module docstring)."""

    types: frozenset[str] | None = None
    level: Level | None = None
    node: str | None = None
    rank: int | None = None
    q: str | None = None
    before: int | None = None
    limit: int = DEFAULT_LIMIT
    until: float | None = None
    since: float | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str], until: float | None = None) -> EventQuery:
        """The query of ``GET /api/v1/events``'s parameters; :class:`QueryError` names a bad one."""
        types = None
        if args.get("type"):
            names = [t.strip() for t in args["type"].split(",") if t.strip()]
            unknown = [t for t in names if t not in _TYPES]
            if unknown:
                raise QueryError(f"expected event types of the contract (docs/events.md), got {unknown[0][:60]!r}",
                                 key="type", expected="a comma-separated list of event types", got=unknown[0][:60])
            types = frozenset(names)
        level = None
        if args.get("level"):
            try:
                level = Level(args["level"])
            except ValueError:
                raise QueryError(f"expected one of {', '.join(lv.value for lv in Level)}, got "
                                 f"{args['level'][:60]!r}", key="level", expected="error, warning or info") from None
        return cls(types=types, level=level, node=text_arg(args, "node"), rank=int_arg(args, "rank", 0),
                   q=text_arg(args, "q"), before=int_arg(args, "before", 1),
                   limit=int_arg(args, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT, until=until)

    @property
    def countable(self) -> bool:
        """Whether the index can count every match (only type and level filter)."""
        return self.node is None and self.rank is None and self.q is None and self.before is None \
            and self.until is None and self.since is None

    def may_match(self, raw: bytes) -> bool:
        """A cheap test on a line's raw bytes: False only when the event cannot match."""
        if self.types is not None and not any(b'"type":"%s"' % t.encode() in raw for t in self.types):
            return False
        if self.q is not None and _PLAIN.fullmatch(self.q) and _QUOTE_FREE.fullmatch(self.q):
            return self.q.lower().encode() in raw.lower()
        return True

    def matches(self, event: Event) -> bool:
        kind = event.get("type")
        if self.types is not None and kind not in self.types:
            return False
        if self.level is not None and level_of(kind) is not self.level:
            return False
        if self.rank is not None and (event.get("rank") != self.rank or isinstance(event.get("rank"), bool)):
            return False
        if self.node is not None and self.node not in (event.get("node_id"), event.get("node")):
            return False
        ts = event.get("ts")
        if self.until is not None and not (isinstance(ts, (int, float)) and ts <= self.until):
            return False
        if self.since is not None and not (isinstance(ts, (int, float)) and ts >= self.since):
            return False
        return self.q is None or self.q.lower() in _searchable(event)

    def type_matches(self, kind: str) -> bool:
        return (self.types is None or kind in self.types) and (self.level is None or level_of(kind) is self.level)


class EventIndex:
    """The event log of a run directory (or none) plus the events pushed since; thread-safe."""

    def __init__(self, run_dir: Path | None, recent: int = RECENT) -> None:
        self.path = Path(run_dir) / EVENTS_FILE if run_dir is not None else None
        self._lock = threading.Lock()
        self._pushed: collections.deque[Event] = collections.deque(maxlen=recent)
        self._marks: list[tuple[int, int, float]] = []  # (seq, offset, ts) of every STRIDE-th line
        self._counts: dict[str, int] = {}
        self._end = 0          # the file's bytes indexed: up to the end of its last complete line
        self._lines = 0
        self._last_seq = 0     # of the file
        self._first_ts: float | None = None
        self._last_ts: float | None = None

    # ---------------------------------------------------------------- inputs
    def add(self, events: Iterable[Event]) -> None:
        """Events pushed live (in order); only the last :data:`RECENT` are kept."""
        with self._lock:
            last = self._pushed[-1]["seq"] if self._pushed else 0
            self._pushed.extend(e for e in events if isinstance(e.get("seq"), int) and e["seq"] > last)

    # ----------------------------------------------------------------- reads
    def query(self, query: EventQuery) -> dict[str, Any]:
        """``{"items": [...newest first, each with its "level"], "total", "next_before", "partial"}``."""
        with self._lock:
            readable = self._refresh()
            tail = [e for e in self._pushed if e["seq"] > self._last_seq] if readable else list(self._pushed)
            marks, end = list(self._marks), self._end
            total = self._count(query, tail) if query.countable else None
        items: list[Event] = []
        oldest: int | None = None
        for event in reversed(tail):
            if query.before is not None and event["seq"] >= query.before:
                continue
            oldest = event["seq"]
            if query.matches(event):
                items.append(event)
                if len(items) == query.limit:
                    return _answer(items, total, event["seq"], False)
        partial = False
        if readable and self.path is not None:
            start = _start(marks, end, query)
            found, oldest_read, partial = _scan(self.path, start, query, query.limit - len(items))
            items += found
            oldest = oldest_read if oldest_read is not None else oldest
            if len(items) == query.limit or partial:
                return _answer(items, total, oldest if partial else items[-1]["seq"], partial)
        return _answer(items, total, None, False)

    def span(self) -> tuple[float | None, float | None]:
        """The first and the last event's ``ts`` (None, None before any)."""
        with self._lock:
            readable = self._refresh()
            first, last = (self._first_ts, self._last_ts) if readable else (None, None)
            if self._pushed:
                first = first if first is not None else self._pushed[0].get("ts")
                last = max(last or 0.0, float(self._pushed[-1].get("ts") or 0.0))
            return first, last

    def last_seq(self) -> int:
        with self._lock:
            readable = self._refresh()
            return max(self._last_seq if readable else 0, self._pushed[-1]["seq"] if self._pushed else 0)

    # --------------------------------------------------------------- helpers
    def _refresh(self) -> bool:
        """Index what was appended to the file since; False when there is no readable file."""
        if self.path is None:
            return False
        try:
            size = os.stat(self.path).st_size
            if size <= self._end:
                return True
            with open(self.path, "rb") as f:
                f.seek(self._end)
                data = f.read(size - self._end)
        except OSError:
            return False
        cut = data.rfind(b"\n") + 1  # a line being written now is indexed next time
        offset = self._end
        for line in data[:cut].split(b"\n")[:-1]:
            head = _head(line)
            if head is not None:
                seq, ts, kind = head
                if self._lines % STRIDE == 0:
                    self._marks.append((seq, offset, ts))
                self._lines += 1
                self._counts[kind] = self._counts.get(kind, 0) + 1
                self._last_seq = max(self._last_seq, seq)
                self._first_ts = ts if self._first_ts is None else self._first_ts
                self._last_ts = ts
            offset += len(line) + 1
        self._end += cut
        return True

    def _count(self, query: EventQuery, tail: list[Event]) -> int:
        counted = sum(n for kind, n in self._counts.items() if query.type_matches(kind))
        return counted + sum(1 for e in tail if query.matches(e))


def _start(marks: list[tuple[int, int, float]], end: int, query: EventQuery) -> int:
    """A byte offset such that every line that may match lies before it: the indexed line at or
    after ``before`` (and the first indexed line after ``until``), else the end."""
    start = end
    if query.before is not None:
        i = bisect.bisect_left(marks, (query.before, -1, 0.0))
        if i < len(marks):
            start = min(start, marks[i][1])
    if query.until is not None:
        i = next((i for i, mark in enumerate(marks) if mark[2] > query.until), None)
        if i is not None:
            start = min(start, marks[i][1])
    return start


def _scan(path: Path, start: int, query: EventQuery, wanted: int) -> tuple[list[Event], int | None, bool]:
    """Up to ``wanted`` matches reading ``path`` backwards from byte ``start``: (matches, the
    oldest seq read, whether the budget ran out first)."""
    found: list[Event] = []
    oldest: int | None = None
    if wanted <= 0:
        return found, oldest, False
    scanned = 0
    with open(path, "rb") as f:
        for line in _lines_back(f, start):
            scanned += len(line) + 1
            head = _head(line)
            if head is None or (query.before is not None and head[0] >= query.before):
                continue
            oldest = head[0]
            if query.since is not None and head[1] < query.since:  # older lines are older still
                return found, oldest, False
            if query.may_match(line):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and query.matches(event):
                    found.append(event)
                    if len(found) == wanted:
                        return found, oldest, False
            if scanned > SCAN_BUDGET_BYTES:
                return found, oldest, True
    return found, oldest, False


def _lines_back(f: BinaryIO, end: int) -> Iterator[bytes]:
    """The complete lines before byte ``end`` (a line start or the end of a line), last first."""
    position, rest = end, b""
    while position > 0:
        size = min(CHUNK, position)
        position -= size
        f.seek(position)
        lines = (f.read(size) + rest).split(b"\n")
        rest = lines[0]
        for line in reversed(lines[1:]):
            if line:
                yield line
    if rest:
        yield rest


def _head(line: bytes) -> tuple[int, float, str] | None:
    """A line's (seq, ts, type), from its head when written by the event log, else parsed."""
    match = _HEAD.match(line)
    if match is not None:
        return int(match[1]), float(match[2]), match[3].decode()
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
        return None
    ts = event.get("ts")
    return event["seq"], float(ts) if isinstance(ts, (int, float)) else 0.0, str(event.get("type"))


def _answer(items: list[Event], total: int | None, next_before: int | None, partial: bool) -> dict[str, Any]:
    return {"items": [presented(e) for e in items], "total": total,
            "next_before": next_before, "partial": partial}


def _searchable(event: Event) -> str:
    """The event's type and values as one lower-case text (what ``q`` searches)."""
    parts: list[str] = []

    def walk(value: Any, depth: int) -> None:
        if isinstance(value, Mapping) and depth < 4:
            for item in value.values():
                walk(item, depth + 1)
        elif isinstance(value, list) and depth < 4:
            for item in value[:100]:
                walk(item, depth + 1)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            parts.append(str(value))

    walk({k: v for k, v in event.items() if k not in ("seq", "ts")}, 0)
    return "\n".join(parts).lower()


def text_arg(args: Mapping[str, str], key: str) -> str | None:
    """The text parameter ``key`` (at most MAX_TEXT characters), None when absent or empty."""
    value = args.get(key)
    if value is None or value == "":
        return None
    if len(value) > MAX_TEXT:
        raise QueryError(f"expected at most {MAX_TEXT} characters, got {len(value)}", key=key,
                         expected=f"<= {MAX_TEXT} characters", got=len(value))
    return value


def int_arg(args: Mapping[str, str], key: str, low: int, high: int | None = None) -> int | None:
    """The integer parameter ``key`` in [low, high], None when absent; QueryError names it otherwise."""
    value = args.get(key)
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18 or int(value) < low \
            or (high is not None and int(value) > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise QueryError(f"expected an integer {bound}, got {value[:60]!r}", key=key, expected=f"an integer {bound}",
                         got=value[:60])
    return int(value)


def number_arg(args: Mapping[str, str], key: str) -> float | None:
    """The finite number parameter ``key`` (a Unix time), None when absent."""
    value = args.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise QueryError(f"expected a number (Unix seconds), got {value[:60]!r}", key=key, expected="a number",
                         got=value[:60])
    return number
