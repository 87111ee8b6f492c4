"""The run directory: the job's record on disk, readable live and after the run.

Layout (all files UTF-8)::

    RUN_DIR/
      coordinator.json   where the coordinator listens (endpoint, store port, pid, run id)
      events.jsonl       one JSON object per line: {"seq", "ts", "type", ...fields}
      state.json         the latest snapshot of membership and rounds

``events.jsonl`` is append-only and written through after every event, so a
reader can tail it while the job runs and replay it afterwards; ``seq`` numbers
are contiguous from 1, which lets a live reader resume exactly where it
stopped. A coordinator started again on the same directory goes on with the
next ``seq`` (:attr:`EventLog.previous` summarises what the earlier one
wrote). ``state.json`` and ``coordinator.json`` are replaced atomically (write
to a temporary file, fsync, rename) so a reader never sees half a file.

The record must not stop the job. When the directory cannot be written (disk
full, read-only, a file-size limit), :class:`EventLog` keeps the events that
did not reach the file in memory, byte-exact (a line half written before the
error is completed, never repeated: :class:`AppendOnlyFile`), and writes them
as soon as a write succeeds again; the other writers retry on their own. :class:`WriteHealth`
joins their reports: one warning when the first write fails, and one summary
(``on_recovered``, recorded as a ``run_dir_error`` event) when every writer
that failed has written again.

Names that become path components (a run id under ``torchrt_runs/``) are
checked by :func:`check_run_id`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torchrt.contract import EventType
from torchrt.errors import RendezvousConfigError, RendezvousError, TorchrtError

logger = logging.getLogger(__name__)

__all__ = [
    "COORDINATOR_FILE",
    "EVENTS_FILE",
    "AppendOnlyFile",
    "STATE_FILE",
    "EventLog",
    "InvalidRunIdError",
    "PreviousRun",
    "RunDirError",
    "WriteHealth",
    "check_run_id",
    "ensure_writable",
    "read_events",
    "write_json_atomic",
    "write_text_atomic",
]

EVENTS_FILE = "events.jsonl"
STATE_FILE = "state.json"
COORDINATOR_FILE = "coordinator.json"
MAX_RUN_ID_BYTES = 200
# Events kept in memory while events.jsonl cannot be written; beyond this the oldest are dropped
# (and counted in the run_dir_error event).
MAX_UNWRITTEN_BYTES = 64 << 20

Event = dict[str, Any]


class InvalidRunIdError(RendezvousConfigError):
    """A run id that cannot name a directory of its own (it would escape the runs directory)."""

    context = ""


class RunDirError(RendezvousError, TorchrtError):
    """The run directory cannot be created or written."""


def check_run_id(run_id: object, key: str = "run id") -> str:
    """``run_id`` if it can be one path component under the runs directory; else
    :class:`InvalidRunIdError` naming ``key`` (``--run-id``, ``--rdzv-id``, ...)."""
    expected = "a non-empty name without '/', '\\' or control characters, other than '.' and '..'"
    text = run_id if isinstance(run_id, str) else None
    problem = None
    if not text:
        problem = "is empty" if text == "" else f"is not a string ({type(run_id).__name__})"
    elif "/" in text or "\\" in text or (os.altsep and os.altsep in text):
        problem = "contains a path separator"
    elif set(text) == {"."}:
        problem = "is a relative path component"
    elif any(ord(c) < 32 or ord(c) == 127 for c in text):
        problem = "contains a control character"
    elif len(text.encode("utf-8", "surrogatepass")) > MAX_RUN_ID_BYTES:
        problem = f"is longer than {MAX_RUN_ID_BYTES} bytes"
    if problem is not None:
        raise InvalidRunIdError(f"expected {expected}; {run_id!r} {problem}", key=key, expected=expected,
                                got=run_id)
    return text  # type: ignore[return-value]


def ensure_writable(run_dir: Path) -> Path:
    """Create ``run_dir`` if needed and prove a file can be written in it; :class:`RunDirError`
    (with the OS's reason) otherwise. Meant for start-up, before anything else is started."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write-test.{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"torchrt")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} cannot be written: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return run_dir


def write_json_atomic(path: Path, payload: Any) -> None:
    """Replace ``path`` with ``payload`` as JSON so readers see old or new, never half."""
    write_text_atomic(path, json.dumps(payload, indent=1, default=str), durable=True)


def write_text_atomic(path: Path, text: str, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` via a temporary file and rename (fsync'd when ``durable``).
    On failure the temporary file is removed (on a full disk it would hold what space is left)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class WriteHealth:
    """Whether the run directory can be written, as its writers (events, state, TensorBoard) find.

    ``failed(part, error)`` after a write that failed, ``succeeded(part)`` after one that worked;
    both are cheap and thread-safe. The first failure of an outage is logged once as a warning;
    when every part that failed during it has succeeded since, ``on_recovered`` is called (outside
    any lock) with ``{"error", "failed_writes", "since", "parts"}``.
    """

    def __init__(self, run_dir: Path, on_recovered: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.on_recovered = on_recovered
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._outage: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self._outage is None

    def failed(self, part: str, error: BaseException) -> None:
        with self._lock:
            self._failing.add(part)
            if self._outage is not None:
                self._outage["failed_writes"] += 1
                self._outage["parts"].add(part)
                return
            self._outage = {"error": f"{part}: {error}", "failed_writes": 1, "since": round(time.time(), 6),
                            "parts": {part}}
        logger.warning("the run directory %s cannot be written (%s: %s); the job goes on, the record is "
                       "kept in memory and written when the directory can be written again",
                       self.run_dir, part, error)

    def succeeded(self, part: str) -> None:
        if not self._failing:  # the common case, without the lock: nothing to recover from
            return
        with self._lock:
            self._failing.discard(part)
            if self._failing or self._outage is None:
                return
            outage, self._outage = self._outage, None
        outage["parts"] = sorted(outage["parts"])
        logger.warning("the run directory %s can be written again after %d failed writes",
                       self.run_dir, outage["failed_writes"])
        if self.on_recovered is not None:
            self.on_recovered(outage)


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """What an earlier coordinator left in the run directory (read when a new one opens it)."""

    last_seq: int
    pid: int | None            # of the last coordinator that started here
    last_round: int            # the highest round number used (started or formed)
    clean: bool                # whether that coordinator recorded its shutdown
    workers: tuple[Event, ...]  # workers it had seen start and not stop: {rank, node_id, pid}


def read_events(run_dir: Path) -> Iterator[Event]:
    """Replay a run's events in order; a torn line (a crash or a full disk mid-write) is skipped."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("skipping a torn line in %s", path)
                continue
            if isinstance(event, dict):
                yield event


def _previous_run(run_dir: Path) -> PreviousRun | None:
    last_seq, last_round, pid, clean, seen = 0, 0, None, True, False
    workers: dict[tuple[Any, ...], Event] = {}
    for event in read_events(run_dir):
        seen = True
        kind = event.get("type")
        last_seq = max(last_seq, _int(event.get("seq")))
        if kind == EventType.COORDINATOR_STARTED:
            pid, clean = event.get("pid"), False
            workers.clear()
        elif kind == EventType.SHUTDOWN:
            clean = True
        elif kind in (EventType.ROUND_STARTED, EventType.ROUND_COMPLETED):
            last_round = max(last_round, _int(event.get("round")))
        elif kind in (EventType.WORKER_STARTED, EventType.WORKER_STOPPED):
            worker = {k: event.get(k) for k in ("rank", "node_id", "pid")}
            key = tuple(worker.values())
            if kind == EventType.WORKER_STARTED:
                workers[key] = worker
            else:
                workers.pop(key, None)
    if not seen:
        return None
    return PreviousRun(last_seq=last_seq, pid=pid if isinstance(pid, int) else None, last_round=last_round,
                       clean=clean, workers=tuple(workers.values()))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class AppendOnlyFile:
    """A file that is only ever appended to, and whose writes never raise.

    :meth:`write` returns the ``OSError`` that stopped it (None when everything is in the
    file): what a failed write left unwritten, to the byte (a chunk may be cut by a full disk),
    stays queued in order and goes first at the next :meth:`write` or :meth:`flush`, so the
    file ends up as if nothing had failed. The file is opened (created) at the first write, so
    a directory that cannot be written yet only queues. Beyond ``max_unwritten`` bytes the
    oldest queued chunks are dropped whole (counted in :attr:`dropped`), never the first one,
    part of which may be in the file already. Not thread-safe: its owner serialises calls.
    """

    def __init__(self, path: Path, max_unwritten: int = MAX_UNWRITTEN_BYTES) -> None:
        self.path = Path(path)
        self.max_unwritten = max_unwritten
        self.dropped = 0
        self._fd = -1
        self._closed = False
        self._unwritten: collections.deque[bytes] = collections.deque()
        self._unwritten_bytes = 0
        self._head_written = 0  # bytes of the first queued chunk already in the file

    @property
    def unwritten(self) -> int:
        """Chunks not (completely) in the file yet."""
        return len(self._unwritten)

    def open(self) -> None:
        """Open (create) the file now; raises ``OSError`` if it cannot be."""
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, data: bytes) -> OSError | None:
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        self._unwritten.append(data)
        self._unwritten_bytes += len(data)
        while self._unwritten_bytes > self.max_unwritten and len(self._unwritten) > 1:
            self._unwritten_bytes -= len(self._unwritten[1])
            del self._unwritten[1]
            self.dropped += 1
        return self.flush()

    def flush(self) -> OSError | None:
        """Write what is queued; the error that stopped it, if any."""
        try:
            if self._unwritten:
                self.open()
            while self._unwritten:
                chunk = self._unwritten[0]
                self._head_written += os.write(self._fd, memoryview(chunk)[self._head_written:])
                if self._head_written == len(chunk):
                    self._unwritten.popleft()
                    self._unwritten_bytes -= len(chunk)
                    self._head_written = 0
        except OSError as e:
            return e
        return None

    def close(self) -> None:
        """Close the file (a last :meth:`flush` is the caller's to try)."""
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._unwritten:
            logger.error("%d chunks could not be written to %s", len(self._unwritten), self.path)


class EventLog:
    """Append-only event log: a JSON-lines file, a ring of recent events, listeners.

    The file is an :class:`AppendOnlyFile`: a write that fails (:class:`WriteHealth` hears of
    it) leaves the unwritten events queued, and every later ``emit`` and ``flush`` writes them
    first, in order."""

    def __init__(self, run_dir: Path, keep_recent: int = 2000, health: WriteHealth | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.health = health or WriteHealth(self.run_dir)
        self._file = AppendOnlyFile(self.run_dir / EVENTS_FILE)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.previous = _previous_run(self.run_dir)
            self._file.open()
        except OSError as e:
            raise RunDirError(f"run directory {self.run_dir} cannot be written: {e.strerror or e}") from e
        self._seq = self.previous.last_seq if self.previous else 0
        self._sealed = False
        self._recent: collections.deque[Event] = collections.deque(maxlen=keep_recent)
        self._listeners: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()

    @property
    def last_seq(self) -> int:
        return self._seq

    def emit(self, type: str, **fields: Any) -> Event:
        """Record one event now; returns it with its ``seq`` and ``ts`` (none once sealed)."""
        if self._sealed:
            logger.debug("not recorded after the log was sealed: %s %s", type, fields)
            return {"type": type, **fields}
        with self._lock:
            self._seq += 1
            event = {"seq": self._seq, "ts": round(time.time(), 6), "type": type, **fields}
            error = self._file.write(json.dumps(event, default=str, separators=(",", ":")).encode("utf-8") + b"\n")
            self._recent.append(event)
            listeners = list(self._listeners)
        self._report(error)  # outside the lock: a recovery is recorded as an event
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener failed on %s", type)
        return event

    def flush(self) -> bool:
        """Try again to write what a failed write left in memory; True when nothing is left."""
        if not self._file.unwritten:
            return True
        with self._lock:
            error = self._file.flush()
        self._report(error)
        return error is None

    def seal(self) -> None:
        """Record nothing more: what follows a coordinator's ``shutdown`` is its own doing."""
        self._sealed = True

    def take_dropped(self) -> int:
        """Events dropped from memory (never written) since the last call."""
        with self._lock:
            dropped, self._file.dropped = self._file.dropped, 0
        return dropped

    def recent(self, limit: int = 50, type_prefix: str | None = None) -> list[Event]:
        with self._lock:
            events = list(self._recent)
        if type_prefix:
            events = [e for e in events if e["type"].startswith(type_prefix)]
        return events[-limit:] if limit else events

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def close(self) -> None:
        self.flush()
        self._sealed = True
        with self._lock:
            self._file.close()

    def _report(self, error: OSError | None) -> None:
        if error is None:
            self.health.succeeded(EVENTS_FILE)
        else:
            self.health.failed(EVENTS_FILE, error)
