"""Batching, non-blocking event reporter (see the package docstring)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from torchrt.contract import EventType

logger = logging.getLogger(__name__)

Event = dict[str, Any]
Sink = Callable[[list[Event]], None]


class Reporter:
    """Queue events now, deliver them to ``sink`` in batches from a background thread."""

    def __init__(self, sink: Sink, flush_interval: float = 0.2, max_queue: int = 10_000) -> None:
        self._sink = sink
        self._flush_interval = flush_interval
        self._queue: collections.deque[Event] = collections.deque()
        self._max_queue = max_queue
        self._dropped = 0
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="torchrt-telemetry", daemon=True)
        self._thread.start()

    def emit(self, type: str, **fields: Any) -> None:
        """Record an event; never blocks and never raises."""
        if len(self._queue) >= self._max_queue:
            self._dropped += 1
            return
        self._queue.append({"type": type, "ts": time.time(), **fields})

    @property
    def dropped(self) -> int:
        return self._dropped

    def flush(self) -> None:
        """Deliver everything queued so far, in the caller's thread."""
        batch = self._drain()
        if batch:
            try:
                self._sink(batch)
            except Exception as e:
                logger.warning("telemetry: could not deliver %d events: %s", len(batch), e)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self.flush()

    def _drain(self) -> list[Event]:
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if self._dropped:
            batch.append({"type": EventType.TELEMETRY_DROPPED, "ts": time.time(), "count": self._dropped})
            self._dropped = 0
        return batch

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._closed:
                    self._wake.wait(self._flush_interval)
                if self._closed:
                    return
            self.flush()


class NullReporter(Reporter):
    """Used when no coordinator is around (e.g. plain torchrun with c10d): keeps nothing."""

    def __init__(self) -> None:  # no thread, no queue
        self._dropped = 0

    def emit(self, type: str, **fields: Any) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


_reporter: Reporter = NullReporter()

METRIC = EventType.METRIC


def log_metric(name: str, value: float, step: int) -> None:
    """Report one scalar (loss, accuracy, ...): it lands in the job's TensorBoard as ``name``."""
    _reporter.emit(METRIC, name=name, value=float(value), step=int(step))


def get_reporter() -> Reporter:
    """The process-wide reporter (a ``NullReporter`` until ``set_reporter``)."""
    return _reporter


def set_reporter(reporter: Reporter) -> Reporter:
    """Install ``reporter`` process-wide; returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous
