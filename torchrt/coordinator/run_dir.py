"""The run directory: the job's record on disk, readable live and after the run.

Layout (all files UTF-8)::

    RUN_DIR/
      coordinator.json   where the coordinator listens (endpoint, store port, pid, run id)
      events.jsonl       one JSON object per line: {"seq", "ts", "type", ...fields}
      state.json         the latest snapshot of membership and rounds

``events.jsonl`` is append-only and flushed after every event, so a reader can
tail it while the job runs and replay it afterwards; ``seq`` numbers are
contiguous from 1, which lets a live reader resume exactly where it stopped.
``state.json`` and ``coordinator.json`` are replaced atomically (write to a
temporary file, fsync, rename) so a reader never sees half a file.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
STATE_FILE = "state.json"
COORDINATOR_FILE = "coordinator.json"

Event = dict[str, Any]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Replace ``path`` with ``payload`` as JSON so readers see old or new, never half."""
    write_text_atomic(path, json.dumps(payload, indent=1, default=str), durable=True)


def write_text_atomic(path: Path, text: str, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` via a temporary file and rename (fsync'd when ``durable``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class EventLog:
    """Append-only event log: a JSON-lines file, a ring of recent events, listeners."""

    def __init__(self, run_dir: Path, keep_recent: int = 2000) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._path = run_dir / EVENTS_FILE
        self._seq = _last_seq(self._path)
        self._file = open(self._path, "a", encoding="utf-8")
        self._recent: collections.deque[Event] = collections.deque(maxlen=keep_recent)
        self._listeners: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()

    def emit(self, type: str, **fields: Any) -> Event:
        """Record one event now; returns it with its ``seq`` and ``ts``."""
        with self._lock:
            self._seq += 1
            event = {"seq": self._seq, "ts": round(time.time(), 6), "type": type, **fields}
            self._file.write(json.dumps(event, default=str, separators=(",", ":")) + "\n")
            self._file.flush()
            self._recent.append(event)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener failed on %s", type)
        return event

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
        with self._lock:
            self._file.close()


def read_events(run_dir: Path) -> Iterator[Event]:
    """Replay a run's events in order; a torn last line (crash mid-write) is skipped."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                logger.warning("skipping a torn line in %s", path)


def _last_seq(path: Path) -> int:
    last = 0
    for event in read_events(path.parent):
        last = max(last, int(event.get("seq", 0)))
    return last
