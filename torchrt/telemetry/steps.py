"""``torchrt.step()``: the training loop's one telemetry call, one report per window.

A user calls ``torchrt.step(loss=..., samples=...)`` once per training step.
The call never blocks and costs a few microseconds: it reads the clock, adds
to the current *window* under an uncontended lock and keeps the last loss and
scalars as given (a tensor is detached, not read: reading a CUDA tensor would
wait for the GPU). The reporter's flush (:mod:`torchrt.telemetry.reporter`,
about once a second) takes the window and turns it into one report, so a loop
of a thousand steps a second sends one event a second:

``step``           the rank's last step number, the steps of the window, their
                   mean and slowest step time (the time between two calls; the
                   very first call only starts the clock), samples and
                   samples/s, the mean time per step spent waiting for data,
                   in ``torchrt.barrier`` and in checkpoint stalls, the *busy*
                   time (step time less those waits), the last loss and user
                   scalars, and where the data is (dataset, epoch, position).
``step_progress``  the same report, but logged: the first one, one every
                   :data:`PROGRESS_INTERVAL_S` per rank, one when the epoch
                   changes, and the rank's last word (the reporter's final
                   flush repeats the last report if it was not logged). The
                   record thus shows every rank's progress at a bounded rate
                   and ends on each rank's last figures, so a view replayed
                   from the run directory ends where the live one did.

A window without a step gives no report: a rank that stops stepping goes
quiet, and the coordinator's stall rule (:mod:`torchrt.view.alerts`) notices.

What the rest of torchrt knows it hands over itself: ``torchrt.data``'s
pipeline calls :func:`note_data` for every batch (epoch, position, wait, the rank's samples),
``torchrt.barrier`` and the checkpoint manager call :func:`note_wait`, a
checkpoint restore calls :func:`note_restored` (the step numbers go on from the
restored step). This module imports nothing of torch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from torchrt.contract import EventType
from torchrt.telemetry.reporter import Event, add_source

__all__ = ["MAX_SCALARS", "PROGRESS_INTERVAL_S", "WAITS", "StepMeter", "note_data", "note_restored", "note_wait",
           "step"]

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 10.0  # a rank's step report is logged at most this often (plus epoch changes, last word)
MAX_SCALARS = 32            # user scalar names kept per window; further names are counted, not kept
WAITS = ("data", "barrier", "checkpoint")  # the waits a step report breaks out (note_wait kinds)
_WAIT_FIELDS = {"data": "data_wait_ms", "barrier": "barrier_ms", "checkpoint": "checkpoint_ms"}


class _DataPlace(NamedTuple):
    """Where the rank's last batch came from (what :func:`note_data` was told)."""

    dataset: str
    epoch: int
    position: int
    samples: int
    session: str


class _Window:
    """What the steps of one reporter window add up to."""

    __slots__ = ("steps", "timed", "total_s", "max_s", "samples", "timed_samples", "waits", "loss", "scalars",
                 "scalars_dropped")

    def __init__(self) -> None:
        self.steps = 0          # calls in the window
        self.timed = 0          # of them, with a previous call to time them from
        self.total_s = 0.0
        self.max_s = 0.0
        self.samples: int | None = None
        self.timed_samples = 0  # of them, those of the timed steps: the rate is theirs over total_s
        self.waits = dict.fromkeys(WAITS, 0.0)
        self.loss: Any = None
        self.scalars: dict[str, Any] = {}
        self.scalars_dropped = 0


class StepMeter:
    """One process's step figures (see the module docstring); ``clock`` is monotonic seconds,
    ``wall`` the Unix time that stamps the reports."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, wall: Callable[[], float] = time.time,
                 progress_interval: float = PROGRESS_INTERVAL_S) -> None:
        self.clock, self.wall = clock, wall
        self.progress_interval = progress_interval
        self._lock = threading.Lock()
        self._window = _Window()
        self._step = 0
        self._previous: float | None = None   # the clock at the last call
        self._data: _DataPlace | None = None  # where the last batch came from
        self._logged_at: float | None = None  # the clock when a report was last logged
        self._logged_epoch: int | None = None
        self._last: Event | None = None       # the last report, if it was not logged

    # ---------------------------------------------------------- training thread
    def step(self, loss: Any = None, samples: int | None = None, **scalars: Any) -> None:
        """One training step (see the module docstring). Never blocks, never raises on bad values
        (they are dropped when the window is reported)."""
        if loss is not None and not isinstance(loss, (int, float)):
            loss = _detached(loss)
        now = self.clock()
        with self._lock:
            self._step += 1
            window = self._window
            window.steps += 1
            timed = self._previous is not None
            if timed:
                elapsed = now - self._previous
                window.timed += 1
                window.total_s += elapsed
                if elapsed > window.max_s:
                    window.max_s = elapsed
            self._previous = now
            if samples is not None:
                count = samples if isinstance(samples, int) else _count(samples)
                window.samples = (window.samples or 0) + count
                if timed:  # the first call's samples were trained on before the clock started
                    window.timed_samples += count
            if loss is not None:
                window.loss = loss
            if scalars:
                kept = window.scalars
                for name, value in scalars.items():
                    if name in kept or len(kept) < MAX_SCALARS:
                        kept[name] = value if isinstance(value, (int, float)) else _detached(value)
                    else:
                        window.scalars_dropped += 1

    def note_wait(self, kind: str, seconds: float) -> None:
        """``seconds`` of this step spent waiting on ``kind`` (one of :data:`WAITS`)."""
        with self._lock:
            waits = self._window.waits
            if kind in waits:
                waits[kind] += seconds

    def note_data(self, dataset: str, epoch: int, position: int, wait_s: float, *, samples: int,
                  session: str) -> None:
        """A batch was delivered by ``dataset``'s pipeline (``session``) after ``wait_s`` of waiting;
        the job is at ``position`` of ``epoch``, and the pipeline has given this rank ``samples`` real
        samples of it."""
        with self._lock:
            self._data = _DataPlace(dataset, epoch, position, samples, session)
            self._window.waits["data"] += wait_s

    def note_restored(self, step: int) -> None:
        """A checkpoint of ``step`` was restored: the next call is step ``step + 1``."""
        with self._lock:
            self._step = step

    # ------------------------------------------------------------ flush thread
    def window(self, final: bool = False) -> list[Event]:
        """This window's report (none when no step happened), starting a new window; the
        reporter's flush calls it (``final``: the process's last flush)."""
        now = self.clock()
        with self._lock:
            window, self._window = self._window, _Window()
            step = self._step
            data = self._data
        if window.steps == 0:
            if final and self._last is not None:  # the last report was live only: log it as the last word
                report, self._last = {**self._last, "type": EventType.STEP_PROGRESS, "ts": self.wall()}, None
                return [report]
            return []
        report = self._report(window, step, data)
        epoch = data.epoch if data is not None else None
        due = (final or self._logged_at is None or now - self._logged_at >= self.progress_interval
               or epoch != self._logged_epoch)
        if due:
            report["type"] = EventType.STEP_PROGRESS
            self._logged_at, self._logged_epoch, self._last = now, epoch, None
        else:
            self._last = report
        return [report]

    def _report(self, window: _Window, step: int, data: _DataPlace | None) -> Event:
        report: Event = {"type": EventType.STEP, "ts": self.wall(), "step": step, "steps": window.steps}
        per_step = 1000.0 / window.steps
        waits = {_WAIT_FIELDS[kind]: round(seconds * per_step, 3) for kind, seconds in window.waits.items()}
        if window.timed:
            step_ms = window.total_s * 1000.0 / window.timed
            report.update(window_s=round(window.total_s, 6), step_ms=round(step_ms, 3),
                          step_max_ms=round(window.max_s * 1000.0, 3),
                          busy_ms=round(max(step_ms - sum(waits.values()), 0.0), 3))
            if window.samples is not None and window.total_s > 0:
                report["samples_per_s"] = round(window.timed_samples / window.total_s, 3)
        report.update(waits)
        if window.samples is not None:
            report["samples"] = window.samples
        bad: list[str] = []
        loss = _number(window.loss) if window.loss is not None else None
        if loss is not None:
            report["loss"] = loss
        elif window.loss is not None:
            bad.append("loss")
        scalars = {}
        for name, value in window.scalars.items():
            number = _number(value)
            if number is None:
                bad.append(name)
            else:
                scalars[name] = number
        if scalars:
            report["scalars"] = scalars
        if bad:
            report["not_numbers"] = bad[:MAX_SCALARS]  # NaN, inf or not a number at all: shown, not plotted
        if window.scalars_dropped:
            report["scalars_dropped"] = window.scalars_dropped
        if data is not None:
            report.update(dataset=data.dataset, epoch=data.epoch, position=data.position,
                          data_samples=data.samples, data_session=data.session)
        return report


def _detached(value: Any) -> Any:
    """A tensor cut from its graph (keeping it must not keep the graph alive); anything else as is."""
    detach = getattr(value, "detach", None)
    return detach() if callable(detach) else value


def _count(samples: Any) -> int:
    try:
        return int(samples)
    except (TypeError, ValueError):
        return 0


def _number(value: Any) -> float | None:
    """``value`` (a number, a one-element tensor or array) as a finite float, or None. A CUDA
    tensor is read here, in the flush thread, never in the training loop."""
    if isinstance(value, bool):
        return None
    try:
        item = getattr(value, "item", None)
        number = float(item() if callable(item) else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


_meter = StepMeter()
add_source(_meter.window)


def step(loss: Any = None, samples: int | None = None, **scalars: Any) -> None:
    """Report one training step: its loss, the samples it consumed (this rank's batch size) and any
    user scalars by name. Never blocks; see :mod:`torchrt.telemetry.steps`."""
    _meter.step(loss, samples, **scalars)


def note_wait(kind: str, seconds: float) -> None:
    """For torchrt's own parts: ``seconds`` of the current step spent waiting on ``kind``."""
    _meter.note_wait(kind, seconds)


def note_data(dataset: str, epoch: int, position: int, wait_s: float, *, samples: int, session: str) -> None:
    """For ``torchrt.data``: a batch of ``dataset`` was delivered (see :meth:`StepMeter.note_data`)."""
    _meter.note_data(dataset, epoch, position, wait_s, samples=samples, session=session)


def note_restored(step: int) -> None:
    """For ``torchrt.checkpoint``: ``step`` was restored (see :meth:`StepMeter.note_restored`)."""
    _meter.note_restored(step)
