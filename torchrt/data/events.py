"""The data layer's telemetry: event names, the worker-side emitter, and the coordinator-side fold.

Events (all sent with ``get_reporter().emit``, which never blocks; fields are
documented in ``docs/data.md``):

``dataset_registered``  a rank built a pipeline: size, shards, fields, batch size, world size, and which
                        part of the epoch this rank reads (``assignment``)
``data_resumed``        a rank loaded a saved state (epoch, global position, the saving job's world size)
``data_progress``       every ``interval`` seconds and at the end of an epoch: global position, this
                        rank's samples consumed in the epoch; when the rank begins a part of an epoch
                        it had not described (the next epoch after a resumed one), with that part
                        (``assignment``)
``data_timing``         same cadence: seconds spent reading, mapping and waiting for data in the window
                        (waiting: on the pipeline, plus what the training loop reports it waited on
                        the dataset outside it, :meth:`DataEvents.waited`)
``data_preview``        a sample rendering (see :mod:`torchrt.data.preview`)

A rank's step report (``step`` live, ``step_progress`` logged: :mod:`torchrt.telemetry.steps`) also
says where its data is and how many samples the rank has had of the epoch; the fold moves a
registered dataset's position and the rank's count with it, so the job's place in the epoch and
what it consumed are as fresh as the ranks' own (``data_progress`` comes every 5 s), and the
two agree.

:func:`registry_view` folds these events (as the coordinator records them) into
one record per dataset; it imports nothing heavy so the coordinator can use it.
Each pipeline instance carries a random ``session`` id, so per-rank sample
counts add up correctly across restarts (a new process counts from zero).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from torchrt.contract import STEP_REPORTS, EventType
from torchrt.telemetry import get_reporter
from torchrt.telemetry.steps import note_data, note_wait

__all__ = [
    "DATASET_REGISTERED",
    "DATA_PREVIEW",
    "DATA_PROGRESS",
    "DATA_RESUMED",
    "DATA_TIMING",
    "DATA_EVENTS",
    "DataEvents",
    "RegistryFold",
    "registry_view",
]

# The names are the contract's (torchrt.contract); kept here as the data layer's vocabulary.
DATASET_REGISTERED = EventType.DATASET_REGISTERED
DATA_RESUMED = EventType.DATA_RESUMED
DATA_PROGRESS = EventType.DATA_PROGRESS
DATA_TIMING = EventType.DATA_TIMING
DATA_PREVIEW = EventType.DATA_PREVIEW
DATA_EVENTS = (DATASET_REGISTERED, DATA_RESUMED, DATA_PROGRESS, DATA_TIMING, DATA_PREVIEW)


class DataEvents:
    """Per-pipeline emitter: registration, resume, and windowed progress/timing reports."""

    def __init__(self, dataset: str, rank: int, world_size: int, *, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        self.interval = interval
        self.clock = clock
        self.session = os.urandom(4).hex()
        self._epoch_samples: dict[int, int] = {}
        self._epoch_padded: dict[int, int] = {}
        self._window_start = clock()
        self._reset_window()

    def _emit(self, type: str, **fields: Any) -> None:
        get_reporter().emit(type, dataset=self.dataset, rank=self.rank, world_size=self.world_size,
                            session=self.session, **fields)

    def registered(self, **fields: Any) -> None:
        self._emit(DATASET_REGISTERED, **fields)

    def resumed(self, **fields: Any) -> None:
        self._emit(DATA_RESUMED, **fields)

    def _reset_window(self) -> None:
        self._batches = self._samples = 0
        self._read_s = self._map_s = self._wait_s = 0.0

    def step(self, *, epoch: int, position: int, size: int, step: int, steps: int, real: int, padded: int,
             read_s: float, map_s: float, wait_s: float) -> None:
        """Account one delivered batch (and hand epoch, position and wait to the step report,
        :func:`torchrt.telemetry.steps.note_data`); emit progress and timing when the window is over."""
        self._epoch_samples[epoch] = self._epoch_samples.get(epoch, 0) + real
        note_data(self.dataset, epoch, position, wait_s, samples=self._epoch_samples[epoch], session=self.session)
        self._epoch_padded[epoch] = self._epoch_padded.get(epoch, 0) + padded
        self._batches += 1
        self._samples += real
        self._read_s += read_s
        self._map_s += map_s
        self._wait_s += wait_s
        if self.clock() - self._window_start >= self.interval:
            self.report(epoch=epoch, position=position, size=size, step=step, steps=steps, done=False)

    def waited(self, seconds: float) -> None:
        """The consumer waited ``seconds`` for this dataset outside the pipeline's own timing: counted
        in the window's wait and in the current step's data wait, as a late batch from the pipeline is."""
        note_wait("data", seconds)
        self._wait_s += seconds

    @property
    def pending(self) -> bool:
        """Batches were served since the last report."""
        return self._batches > 0

    def report(self, *, epoch: int, position: int, size: int, step: int, steps: int, done: bool,
               assignment: dict[str, Any] | None = None) -> None:
        """Emit ``data_progress`` (with ``assignment`` when given: the part of the epoch this rank
        reads from here, as an epoch begins) and, if any batch was served in the window,
        ``data_timing`` now."""
        now = self.clock()
        extra = {"assignment": assignment} if assignment is not None else {}
        self._emit(DATA_PROGRESS, epoch=epoch, position=position, size=size, step=step, steps=steps,
                   samples=self._epoch_samples.get(epoch, 0), padded=self._epoch_padded.get(epoch, 0), done=done,
                   **extra)
        if self._batches:
            window = max(now - self._window_start, 1e-9)
            per = 1000.0 / self._batches
            self._emit(DATA_TIMING, epoch=epoch, window_s=round(window, 4), batches=self._batches,
                       samples=self._samples, read_s=round(self._read_s, 6), map_s=round(self._map_s, 6),
                       wait_s=round(self._wait_s, 6), read_ms_per_batch=round(self._read_s * per, 3),
                       map_ms_per_batch=round(self._map_s * per, 3), wait_ms_per_batch=round(self._wait_s * per, 3),
                       samples_per_s=round(self._samples / window, 1),
                       wait_fraction=round(min(self._wait_s / window, 1.0), 4))
        self._window_start = now
        self._reset_window()


def registry_view(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fold data events, in order, into ``{dataset: record}`` (see :class:`RegistryFold`)."""
    fold = RegistryFold()
    for event in events:
        fold.apply(event)
    return fold.view


class RegistryFold:
    """The data registry as the coordinator keeps it: events applied one at a time, as they arrive.

    A record holds the facts of the last ``dataset_registered`` (kind, path,
    size, shards, fields, batch size, world size, tail policy, shuffle, seed),
    ``ranks: {rank: {"assignment", "epoch", "position", "samples": {epoch: n}}}``,
    the job's ``epoch`` and ``position`` (the furthest reported), ``resumes``
    (``data_resumed`` events), and the last ``timing`` and ``preview`` per rank.
    Unknown or malformed events are ignored.

    As a part of the job view (:mod:`torchrt.view`): ``snapshot()`` summarises each
    dataset (bounded at any number of ranks, without the previews, which arrive only
    live), ``rows("ranks")`` pages the per-rank detail, ``rows("previews")`` the latest preview
    per (dataset, rank) (live only: a replay has none), ``samples`` feeds the series
    ``DATASET/samples_per_s`` and ``DATASET/wait_fraction``.
    """

    name = "datasets"
    types = frozenset(DATA_EVENTS) | STEP_REPORTS
    row_kinds = ("ranks", "previews")

    def __init__(self) -> None:
        self.view: dict[str, dict[str, Any]] = {}
        # (dataset, rank, session, epoch) -> samples that session has reported so far
        self._counted: dict[tuple[str, int, str, int], int] = {}

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one event; False when it is not a (well-formed) data event."""
        kind, name = event.get("type"), event.get("dataset")
        if kind in STEP_REPORTS:
            return self._step_report(event)
        if not isinstance(name, str) or kind not in DATA_EVENTS:
            return False
        view = self.view
        record = view.setdefault(name, {"name": name, "ranks": {}, "epoch": 0, "position": 0, "resumes": [],
                                        "timing": {}, "preview": {}})
        rank = event.get("rank")
        if not isinstance(rank, int):
            return False
        ranks = record["ranks"].setdefault(rank, {"samples": {}, "epoch": 0, "position": 0, "assignment": None})
        if kind == DATASET_REGISTERED:
            for key in ("kind", "path", "size", "shards", "fields", "batch_size", "world_size", "tail", "shuffle",
                        "seed", "workers", "worker_mode"):
                if key in event:
                    record[key] = event[key]
            ranks["assignment"] = event.get("assignment")
            _advance(record, ranks, event)
        elif kind == DATA_RESUMED:
            record["resumes"].append({k: event.get(k) for k in ("rank", "epoch", "position", "world_size",
                                                                 "saved_world_size")})
            ranks["assignment"] = event.get("assignment", ranks["assignment"])
            _advance(record, ranks, event, rewind=True)
        elif kind == DATA_PROGRESS:
            if "assignment" in event:  # an epoch begun: the rank's part of it from here
                ranks["assignment"] = event["assignment"]
            self._count(name, rank, ranks, event.get("epoch"), event.get("samples"), event.get("session"))
            _advance(record, ranks, event)
        elif kind == DATA_TIMING:
            record["timing"][rank] = {k: v for k, v in event.items() if k not in ("type", "dataset", "rank")}
        else:
            record["preview"][rank] = {k: v for k, v in event.items() if k not in ("type", "dataset", "rank")}
        return True

    def _step_report(self, event: dict[str, Any]) -> bool:
        """A rank's step report says where its data is (about every second live, against
        ``data_progress`` every 5 s): it moves the position of a dataset that rank registered, so
        the job's place in the epoch keeps up with the ranks' own."""
        name, rank = event.get("dataset"), event.get("rank")
        record = self.view.get(name)
        ranks = record["ranks"].get(rank) if record is not None else None
        if ranks is None:
            return False
        self._count(name, rank, ranks, event.get("epoch"), event.get("data_samples"), event.get("data_session"))
        _advance(record, ranks, event)
        return True

    def _count(self, name: str, rank: int, ranks: dict[str, Any], epoch: object, samples: object,
               session: object) -> None:
        """A pipeline session's running count of the rank's samples in ``epoch``: what it adds to the
        rank's count since that session's last word (a count that goes back, a report older than one
        already folded, adds nothing)."""
        if not isinstance(epoch, int) or not isinstance(samples, int) or isinstance(samples, bool):
            return
        key = (name, rank, str(session), epoch)
        delta = samples - self._counted.get(key, 0)
        if delta > 0:
            self._counted[key] = samples
            ranks["samples"][epoch] = ranks["samples"].get(epoch, 0) + delta

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: _summary(record) for name, record in self.view.items()}

    def rows(self, kind: str) -> list[dict[str, Any]]:
        if kind == "previews":
            return [{"dataset": name, "rank": rank, **preview} for name, record in self.view.items()
                    for rank, preview in sorted(record["preview"].items())]
        return [{"dataset": name, "rank": rank, **entry, "timing": record["timing"].get(rank)}
                for name, record in self.view.items() for rank, entry in sorted(record["ranks"].items())]

    def samples(self, event: dict[str, Any]) -> list[tuple[str, str, float]]:
        """``(dataset, measure, value)`` of a ``data_timing`` event."""
        if event.get("type") != DATA_TIMING or not isinstance(event.get("dataset"), str):
            return []
        return [(event["dataset"], key, float(event[key])) for key in ("samples_per_s", "wait_fraction")
                if isinstance(event.get(key), (int, float)) and not isinstance(event.get(key), bool)]


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """A dataset's record with its per-rank parts summarised (see ``RegistryFold.snapshot``)."""
    facts = {k: v for k, v in record.items() if k not in ("ranks", "timing", "preview", "resumes")}
    timing = record["timing"].values()
    rates = [t["samples_per_s"] for t in timing if isinstance(t.get("samples_per_s"), (int, float))]
    by_rank = {rank: t["wait_fraction"] for rank, t in record["timing"].items()
               if isinstance(t.get("wait_fraction"), (int, float))}
    waits = list(by_rank.values())
    return {**facts, "ranks": len(record["ranks"]),
            "samples_in_epoch": sum(r["samples"].get(record["epoch"], 0) for r in record["ranks"].values()),
            "resumes": len(record["resumes"]), "last_resume": record["resumes"][-1] if record["resumes"] else None,
            "timing": {"ranks": len(record["timing"]), "samples_per_s": round(sum(rates), 3),
                       "wait_fraction_max": max(waits, default=None),
                       "wait_fraction_max_rank": max(by_rank, key=by_rank.__getitem__) if by_rank else None,
                       "wait_fraction_mean": round(sum(waits) / len(waits), 4) if waits else None}}


def _advance(record: dict[str, Any], ranks: dict[str, Any], event: dict[str, Any], rewind: bool = False) -> None:
    """Move the job's and the rank's (epoch, position) forward; a resume may also move them back."""
    epoch, position = event.get("epoch"), event.get("position")
    if not isinstance(epoch, int) or not isinstance(position, int):
        return
    if event.get("done"):
        epoch, position = epoch + 1, 0
    if rewind or (epoch, position) >= (ranks["epoch"], ranks["position"]):
        ranks["epoch"], ranks["position"] = epoch, position
    if rewind or (epoch, position) >= (record["epoch"], record["position"]):
        record["epoch"], record["position"] = epoch, position
