"""Batching, non-blocking event reporter (see the package docstring).

Besides the events queued with ``emit``, a flush takes the reports of the
*window sources* (:func:`add_source`): a source aggregates something frequent
(the training loop's steps, :mod:`torchrt.telemetry.step`) and hands over one
report per flush window, so a thousand steps a second cost one event a second.
A source is called with ``final=True`` by :meth:`Reporter.close` (the process's
last flush), so it can mark its last word.

**Delivery to the coordinator** (:func:`coordinator_reporter`, which
``torchrt.init`` uses): a flush *sends* its batch as a telemetry op without an
id, so the coordinator answers nothing and the reporter thread does not wait
for it. At a thousand ranks that is a thousand replies a second the
coordinator's loop no longer writes (a reply per batch was ~18 % of its time;
the worker never used the reply's counts, and refusals are recorded on the
coordinator's side). The last flush, at :meth:`Reporter.close`, is a request
instead, even with nothing left to say: ops of one connection are taken in
order, so once it is answered the coordinator has taken every batch sent before
it, and the process's last reports (its logged last word) are in the record
before its connection closes and the coordinator records ``worker_stopped``.
Every :data:`CONFIRM_EVERY`-th batch is a request too, and so is every batch
after a request that was not answered: at most that many batches are ever in
flight unanswered, so a coordinator that stops reading (hung, not gone) fills
no socket buffer until a send blocks for good (and the worker's exit with it);
each flush then waits for an answer, at most :data:`ANSWER_TIMEOUT_S`, as every
flush did before. A batch that cannot be delivered (the connection is gone, no
answer) is logged, as before; a full queue drops and counts
(``telemetry_dropped``), never blocks.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from torchrt.contract import EventType, Op

logger = logging.getLogger(__name__)

Event = dict[str, Any]
Sink = Callable[[list[Event]], None]
Source = Callable[[bool], list[Event]]  # final -> this window's reports

DEFAULT_FLUSH_INTERVAL_S = 1.0
ANSWER_TIMEOUT_S = 10.0  # a batch sent as a request waits this long for the coordinator's answer
CONFIRM_EVERY = 10  # of a coordinator reporter's batches, at most this many in a row go without an answer
_sources: list[Source] = []


def add_source(source: Source) -> None:
    """Have every reporter's flush take ``source``'s window reports (once per source)."""
    if source not in _sources:
        _sources.append(source)


class Reporter:
    """Queue events now, deliver them to ``sink`` in batches from a background thread.

    ``confirm``, when given, takes the last batch (at :meth:`close`) instead of ``sink``, also when
    it is empty: it returns once everything delivered before it was taken (see the module)."""

    def __init__(self, sink: Sink, flush_interval: float = DEFAULT_FLUSH_INTERVAL_S, max_queue: int = 10_000,
                 confirm: Sink | None = None) -> None:
        self._sink = sink
        self._confirm = confirm
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

    def flush(self, final: bool = False) -> None:
        """Deliver everything queued so far and the sources' window reports, in the caller's thread
        (``final``: the last flush of this process)."""
        batch = self._drain(final)
        deliver = self._confirm if final and self._confirm is not None else self._sink
        if batch or deliver is self._confirm:
            try:
                deliver(batch)
            except Exception as e:
                logger.warning("telemetry: could not deliver %d events: %s", len(batch), e)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self.flush(final=True)

    def _drain(self, final: bool = False) -> list[Event]:
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        for source in list(_sources):
            try:
                batch.extend(source(final))
            except Exception:  # a source's bug must not stop the other reports
                logger.exception("telemetry: a window source failed")
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


class Channel(Protocol):
    """What a reporter needs of a connection to the coordinator (a ``CoordinatorClient``)."""

    def send(self, op: str, **fields: Any) -> None: ...

    def request(self, op: str | None = None, *, timeout: float | None = 30.0, **fields: Any) -> Any: ...


class _Delivery:
    """A coordinator reporter's sink: telemetry ops sent without a reply, but at most
    :data:`CONFIRM_EVERY` in a row unanswered (see the module docstring)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.unanswered = 0  # batches sent since the last answered request

    def send(self, events: list[Event]) -> None:
        if self.unanswered + 1 >= CONFIRM_EVERY:
            self.confirm(events)
            return
        self.channel.send(Op.TELEMETRY, events=events)
        self.unanswered += 1

    def confirm(self, events: list[Event]) -> None:
        """``events`` as a request: returns once the coordinator took it and everything before it
        (raises when it does not answer; the next batch is a request again)."""
        self.unanswered += 1
        self.channel.request(Op.TELEMETRY, events=events, timeout=ANSWER_TIMEOUT_S)
        self.unanswered = 0


def coordinator_reporter(channel: Channel, flush_interval: float = DEFAULT_FLUSH_INTERVAL_S) -> Reporter:
    """A reporter whose batches go to the coordinator over ``channel`` as telemetry ops: sent
    without waiting for a reply, every tenth and the last one a request (see the module docstring)."""
    delivery = _Delivery(channel)
    return Reporter(delivery.send, flush_interval, confirm=delivery.confirm)


class NullReporter(Reporter):
    """Used when no coordinator is around (e.g. plain torchrun with c10d): keeps nothing."""

    def __init__(self) -> None:  # no thread, no queue
        self._dropped = 0

    def emit(self, type: str, **fields: Any) -> None:
        return None

    def flush(self, final: bool = False) -> None:
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
