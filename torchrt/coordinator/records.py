"""Checkpoint records and metrics: what the coordinator derives from workers' telemetry.

``CheckpointRecords`` folds the checkpoint events (see docs/checkpoint.md) into the
job's checkpoint history for the state snapshot: committed checkpoints (newest last,
the last ``keep`` of them), failures and skips, restores.

``MetricsWriter`` turns events into TensorBoard scalars under ``RUN_DIR/tensorboard``.
It runs on a thread of its own (importing tensorboard takes a second or two, and
writing must never stall the coordinator's event loop): ``observe`` only enqueues.
A full or read-only disk costs scalars nothing: they wait and are written later.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from collections import deque
from pathlib import Path
from typing import Any

from torchrt.contract import EventType
from torchrt.coordinator.run_dir import WriteHealth

logger = logging.getLogger(__name__)

Event = dict[str, Any]
TENSORBOARD_DIR = "tensorboard"


class CheckpointRecords:
    """The job's checkpoints as the coordinator knows them."""

    def __init__(self, keep: int = 50) -> None:
        self.committed: deque[Event] = deque(maxlen=keep)
        self.problems: deque[Event] = deque(maxlen=keep)
        self.restored: deque[Event] = deque(maxlen=keep)

    def apply(self, event: Event) -> bool:
        kind = event.get("type")
        fields = {k: v for k, v in event.items() if k != "type"}
        if kind == EventType.CHECKPOINT_COMMITTED:
            self.committed.append(fields)
        elif kind in (EventType.CHECKPOINT_FAILED, EventType.CHECKPOINT_SKIPPED):
            self.problems.append({"kind": kind.removeprefix("checkpoint_"), **fields})
        elif kind == EventType.CHECKPOINT_RESTORED:
            self.restored.append(fields)
        else:
            return False
        return True

    def view(self) -> dict[str, Any]:
        latest = self.committed[-1] if self.committed else None
        return {"latest_step": latest["step"] if latest else None, "committed": list(self.committed),
                "problems": list(self.problems), "restored": list(self.restored)}


def scalars_of(event: Event) -> list[tuple[str, float, int]]:
    """The (tag, value, step) scalars an event contributes to TensorBoard."""
    kind, rank = event.get("type"), event.get("rank")
    if kind == EventType.METRIC:  # torchrt.log_metric(name, value, step)
        return [(str(event["name"]), float(event["value"]), int(event.get("step", 0)))]
    if kind == EventType.ROUND_COMPLETED:
        n = int(event["round"])
        return [("rendezvous/round_total_s", event["total_s"], n), ("rendezvous/world_size", event["world_size"], n)]
    if kind == EventType.BARRIER:
        return [(f"barrier/{event['name']}/p50_us", event.get("p50_us", event["latency_us"]), int(event["call"]))]
    if kind == EventType.CHECKPOINT_SAVED:
        step = int(event["step"])
        return [(f"checkpoint/{key}/rank{rank}", event[key], step) for key in ("stall_s", "write_s", "mb_s")]
    if kind == EventType.CHECKPOINT_COMMITTED:
        return [(f"checkpoint/{key}", event[key], int(event["step"])) for key in ("total_s", "mb_s", "bytes")]
    if kind == EventType.DATA_TIMING:
        step = int(event.get("position", 0)) + int(event.get("epoch", 0)) * 10**9
        return [(f"data/{event['dataset']}/{key}/rank{rank}", event[key], step)
                for key in ("samples_per_s", "wait_fraction") if key in event]
    return []


class MetricsWriter:
    """Writes scalars of observed events to TensorBoard from a background thread.

    A write that fails (disk full, read-only) is reported to ``health`` and the scalars stay
    queued (the newest ``MAX_PENDING_SCALARS``); TensorBoard's own writer is unusable after an
    error, so a new one (a new event file) is made once ``MIN_FREE_BYTES`` are free again,
    checked every ``RETRY_S``. The thread itself never dies of a write error."""

    RETRY_S = 1.0
    MIN_FREE_BYTES = 1 << 20
    MAX_PENDING_SCALARS = 100_000

    def __init__(self, run_dir: Path, health: WriteHealth | None = None) -> None:
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.health = health or WriteHealth(Path(run_dir))
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="torchrt-tensorboard", daemon=True)
        self._thread.start()

    def observe(self, event: Event) -> None:
        self._queue.put(event)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        writer: Any = None
        pending: deque[tuple[str, float, int, float | None]] = deque(maxlen=self.MAX_PENDING_SCALARS)
        failing = False
        while True:
            try:
                event = self._queue.get(timeout=self.RETRY_S if failing else None)
            except queue.Empty:
                event = {}  # time to try the pending scalars again
            if event is None:
                break
            for event in self._drain(event):
                pending.extend(self._scalars(event))
            if pending and not (failing and self._still_full()):
                writer, failing = self._write(writer, pending)
        if pending and not failing:
            writer, failing = self._write(writer, pending)
        if writer is not None:
            _close_quietly(writer)

    def _drain(self, first: Event) -> list[Event]:
        """``first`` and whatever else is queued now (written as one batch, flushed once)."""
        batch = [first]
        while len(batch) < 1000:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is None:
                self._queue.put(None)  # seen again by _run, after this batch is written
                break
            batch.append(event)
        return batch

    @staticmethod
    def _scalars(event: Event) -> list[tuple[str, float, int, float | None]]:
        try:
            return [(tag, value, step, event.get("ts")) for tag, value, step in scalars_of(event)]
        except (KeyError, TypeError, ValueError) as e:
            logger.debug("no scalars from malformed %s event: %s", event.get("type"), e)
            return []

    def _still_full(self) -> bool:
        try:
            return shutil.disk_usage(self.log_dir.parent).free < self.MIN_FREE_BYTES
        except OSError:
            return True

    def _write(self, writer: Any, pending: deque[tuple[str, float, int, float | None]]) -> tuple[Any, bool]:
        """Write and flush ``pending``, emptied once flushed; (the writer to go on with, failing)."""
        try:
            if writer is None:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.log_dir))
            for tag, value, step, walltime in pending:
                writer.add_scalar(tag, value, step, walltime=walltime)
            writer.flush()
        except OSError as e:
            self.health.failed(TENSORBOARD_DIR, e)
            if writer is not None:
                _close_quietly(writer)
            return None, True
        pending.clear()
        self.health.succeeded(TENSORBOARD_DIR)
        return writer, False


def _close_quietly(writer: Any) -> None:
    try:
        writer.close()
    except OSError as e:
        logger.debug("closing the TensorBoard writer: %s", e)
