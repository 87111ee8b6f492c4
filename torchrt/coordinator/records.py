"""TensorBoard scalars: what the coordinator derives from the job's events for TensorBoard.

``MetricsWriter`` turns events into TensorBoard scalars under ``RUN_DIR/tensorboard``.
It runs on a thread of its own (importing tensorboard takes a second or two, and
writing must never stall the coordinator's event loop): ``observe`` only enqueues,
and only the kinds of event that have scalars at all.
A full or read-only disk costs scalars nothing: they wait and are written later.

Tags have bounded cardinality: the part of a tag that users name (a metric, a
barrier, a dataset) goes through a :class:`~torchrt.view.names.NameTable` per
family (:class:`TagNames`, the job view's rules and cap), so a barrier named
after the step is one tag ``barrier/step-#/p50_us``, not one per step.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchrt.contract import EventType
from torchrt.coordinator.run_dir import AppendOnlyFile, WriteHealth
from torchrt.view.names import NameTable
from torchrt.view.series import DEFAULT_CAP

logger = logging.getLogger(__name__)

Event = dict[str, Any]
TENSORBOARD_DIR = "tensorboard"


Names = Callable[[str, str], str]  # (family, name) -> the name a tag uses


class TagNames:
    """The names tags use, one :class:`NameTable` per family (``metric``, ``barrier``, ``dataset``)."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self.tables: dict[str, NameTable] = {}

    def __call__(self, family: str, name: str) -> str:
        table = self.tables.get(family)
        if table is None:
            table = self.tables[family] = NameTable(self.cap, f"TensorBoard {family} names")
        return table.key(name)


def _as_given(family: str, name: str) -> str:
    return name


Scalars = list[tuple[str, float, int]]  # (tag, value, step)


def _metric(event: Event, names: Names) -> Scalars:  # torchrt.log_metric(name, value, step)
    return [(names("metric", str(event["name"])), float(event["value"]), int(event.get("step", 0)))]


def _round(event: Event, names: Names) -> Scalars:
    n = int(event["round"])
    return [("rendezvous/round_total_s", event["total_s"], n), ("rendezvous/world_size", event["world_size"], n)]


def _barrier(event: Event, names: Names) -> Scalars:
    return [(f"barrier/{names('barrier', str(event['name']))}/p50_us", event.get("p50_us", event["latency_us"]),
             int(event["call"]))]


def _checkpoint_saved(event: Event, names: Names) -> Scalars:
    step, rank = int(event["step"]), event.get("rank")
    return [(f"checkpoint/{key}/rank{rank}", event[key], step) for key in ("stall_s", "write_s", "mb_s")]


def _checkpoint_committed(event: Event, names: Names) -> Scalars:
    return [(f"checkpoint/{key}", event[key], int(event["step"])) for key in ("total_s", "mb_s", "bytes")]


def _data_timing(event: Event, names: Names) -> Scalars:
    step = int(event.get("position", 0)) + int(event.get("epoch", 0)) * 10**9
    dataset, rank = names("dataset", str(event["dataset"])), event.get("rank")
    return [(f"data/{dataset}/{key}/rank{rank}", event[key], step)
            for key in ("samples_per_s", "wait_fraction") if key in event]


_SCALARS: dict[str, Callable[[Event, Names], Scalars]] = {
    EventType.METRIC: _metric, EventType.ROUND_COMPLETED: _round, EventType.BARRIER: _barrier,
    EventType.CHECKPOINT_SAVED: _checkpoint_saved, EventType.CHECKPOINT_COMMITTED: _checkpoint_committed,
    EventType.DATA_TIMING: _data_timing,
}


def scalars_of(event: Event, names: Names = _as_given) -> Scalars:
    """The (tag, value, step) scalars an event contributes to TensorBoard; ``names`` gives the name
    a tag uses for a user-chosen one (the writer's :class:`TagNames`). Only the kinds of
    ``_SCALARS`` have any: every other event (a rank's steps, a node's sample) has none."""
    scalars = _SCALARS.get(event.get("type"))
    return [] if scalars is None else scalars(event, names)


class MetricsWriter:
    """Writes scalars of observed events to TensorBoard from a background thread.

    The event file is framed with TensorBoard's own ``RecordWriter`` and ``Event`` protos
    (``torch.utils.tensorboard.summary.scalar``) but written through an
    :class:`~torchrt.coordinator.run_dir.AppendOnlyFile` rather than ``SummaryWriter``, whose
    writer thread dies at the first failed write (with a traceback) and takes every later
    scalar with it. Here a failed write (disk full, read-only) is reported to ``health``, the
    records stay queued, and they are written, in order and whole, when the disk takes them
    again: the next scalar, or a retry every ``RETRY_S`` while anything is queued."""

    RETRY_S = 1.0

    def __init__(self, run_dir: Path, health: WriteHealth | None = None) -> None:
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.health = health or WriteHealth(Path(run_dir))
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._file: AppendOnlyFile | None = None
        self.names = TagNames()  # used on the writer thread only
        self._thread = threading.Thread(target=self._run, name="torchrt-tensorboard", daemon=True)
        self._thread.start()

    def observe(self, event: Event) -> None:
        """Hand ``event`` to the writer thread if it has scalars at all: at a thousand ranks the
        coordinator observes a thousand step reports a second that have none, and each hand-off
        costs the loop thread a queue put and the writer thread a wake-up."""
        if event.get("type") in _SCALARS:
            self._queue.put(event)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        # Import TensorBoard's writer now, while the job is still gathering: imported on the first
        # scalar (the first round's), it held the GIL for the ~0.1 s in which nodes confirm that round.
        _file_version_event()
        while True:
            waiting = self._file is not None and self._file.unwritten
            try:
                event = self._queue.get(timeout=self.RETRY_S if waiting else None)
            except queue.Empty:  # time to try the queued records again
                self._write(b"")
                continue
            if event is None:
                break
            records = b"".join(self._records(e) for e in self._batch(event))
            if records:
                self._write(records)
        if self._file is not None:
            self._write(b"")
            self._file.close()

    def _batch(self, first: Event) -> list[Event]:
        """``first`` and whatever else is queued now (written with one system call)."""
        batch = [first]
        while len(batch) < 1000:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is None:
                self._queue.put(None)  # seen again by _run, after this batch
                break
            batch.append(event)
        return batch

    def _records(self, event: Event) -> bytes:
        try:
            scalars = scalars_of(event, self.names)
        except (KeyError, TypeError, ValueError) as e:
            logger.debug("no scalars from malformed %s event: %s", event.get("type"), e)
            return b""
        return b"".join(_record(_scalar_event(tag, value, step, event.get("ts"))) for tag, value, step in scalars)

    def _write(self, records: bytes) -> None:
        """Append ``records`` (``b""``: retry what is queued) and tell ``health`` how it went."""
        if self._file is None:
            if not records:
                return
            self._file = AppendOnlyFile(self.log_dir / _event_file_name())
            records = _record(_file_version_event()) + records
        with contextlib.suppress(OSError):  # if this fails, so does the write, which says why
            self.log_dir.mkdir(parents=True, exist_ok=True)
        error = self._file.write(records) if records else self._file.flush()
        if error is None:
            self.health.succeeded(TENSORBOARD_DIR)
        else:
            self.health.failed(TENSORBOARD_DIR, error)


def _event_file_name() -> str:
    """Named as ``SummaryWriter`` names its files (TensorBoard reads any ``*tfevents*``)."""
    return f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"


def _record(event: Any) -> bytes:
    """One TensorBoard record (length, CRCs, payload) for an ``Event`` proto."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    framed = io.BytesIO()
    RecordWriter(framed).write(event.SerializeToString())
    return framed.getvalue()


def _file_version_event() -> Any:
    from tensorboard.compat.proto.event_pb2 import Event as TensorBoardEvent

    return TensorBoardEvent(wall_time=time.time(), file_version="brain.Event:2")


def _scalar_event(tag: str, value: float, step: int, walltime: float | None) -> Any:
    from tensorboard.compat.proto.event_pb2 import Event as TensorBoardEvent
    from torch.utils.tensorboard.summary import scalar

    return TensorBoardEvent(wall_time=time.time() if walltime is None else walltime, step=int(step),
                            summary=scalar(tag, float(value)))
