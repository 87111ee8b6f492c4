"""The job view: every part of what the monitor shows, folded from the run's events.

A :class:`JobView` is a registry of *parts* (:data:`PARTS`): folds, which
keep one concern's state, and sources, which turn events into metric series
(:mod:`torchrt.view.fold`). It dispatches each event by type to the parts that
declared it, so adding a concern is adding a part, never a branch here. The
features bring their own parts (:class:`~torchrt.data.events.RegistryFold`,
:class:`~torchrt.checkpoint.fold.CheckpointFold`): the coordinator needs to
know neither their events nor their modules. The view keeps the series in a
:class:`~torchrt.view.series.SeriesBook` (bounded per series and per part).

Live, the coordinator feeds every event it records (and the live-only ones:
user metrics) to :meth:`JobView.apply` on its loop and calls
:meth:`JobView.flush` on its tick to close finished seconds and persist them
(:mod:`torchrt.view.store`). :meth:`JobView.replay` rebuilds the same view from
the run directory alone: the series from ``series/`` and every fold from
``events.jsonl``; since a fold's snapshot depends only on logged events, the
replayed snapshot equals the live one.

:meth:`JobView.snapshot` is what a page loads first: small at any job size
(per-rank detail summarised in each part); the long lists behind it come a
page at a time (:meth:`JobView.page`), the series' points on request
(:meth:`JobView.points`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Union

from torchrt.checkpoint.fold import CheckpointFold
from torchrt.coordinator.run_dir import WriteHealth, read_events
from torchrt.data.events import RegistryFold
from torchrt.errors import FieldError
from torchrt.view import store
from torchrt.view.alerts import AlertsFold
from torchrt.view.barriers import BarriersFold
from torchrt.view.fold import JSON, Event, Fold, Paged, Sample, Source, ViewQueryError, number, page
from torchrt.view.machines import MachinesFold
from torchrt.view.metrics import MetricSource
from torchrt.view.rendezvous import RendezvousFold
from torchrt.view.run import RunFold
from torchrt.view.series import DEFAULT_CAP, SeriesBook
from torchrt.view.workers import WorkersFold

__all__ = ["JobView", "PARTS", "Part"]

logger = logging.getLogger(__name__)

Part = Union[Fold, Source]
# The parts of a job view, in snapshot order. A feature adds its fold here.
PARTS: tuple[Callable[[], Part], ...] = (RunFold, RendezvousFold, WorkersFold, MachinesFold, BarriersFold,
                                         AlertsFold, MetricSource, RegistryFold, CheckpointFold)
_Route = tuple[str, Callable[[Event], bool] | None, Callable[[Event], Iterable[Sample]] | None]


class JobView:
    """The job's observed state (see the module docstring)."""

    def __init__(self, parts: Sequence[Part] | None = None, series_cap: int = DEFAULT_CAP) -> None:
        self.parts = list(parts) if parts is not None else [make() for make in PARTS]
        names = [part.name for part in self.parts]
        if len(set(names)) != len(names):
            raise FieldError(f"expected distinct names, got {names}", key="parts", expected="distinct names",
                             got=names)
        self.folds = [part for part in self.parts if isinstance(part, Fold)]
        self._routes: dict[str, list[_Route]] = {}
        for part in self.parts:
            route = (part.name, part.apply if isinstance(part, Fold) else None,
                     part.samples if isinstance(part, Source) else None)
            for kind in part.types:
                self._routes.setdefault(kind, []).append(route)
        self.series = SeriesBook(series_cap)
        self.store: store.SeriesStore | None = None
        self.seq = 0
        self.ts: float | None = None
        self.failures: dict[str, int] = {}  # part -> events it failed on

    # ---------------------------------------------------------------- inputs
    def apply(self, event: Event, series: bool = True) -> bool:
        """Fold one event into every part that wants it; True when one took it. ``series=False``
        (replaying): do not record its samples, the series come from their own files."""
        kind = event.get("type")
        if not isinstance(kind, str):
            return False
        seq = event.get("seq")
        if isinstance(seq, int):  # a logged event: where the record is
            self.seq, self.ts = seq, event.get("ts")
        took = False
        for part, apply, samples in self._routes.get(kind, ()):
            try:
                if apply is not None and apply(event):
                    took = True
                if samples is not None and series:
                    ts = number(event.get("ts"))
                    for subject, measure, value in samples(event) if ts is not None else ():
                        self.series.add(part, subject, measure, ts, value)
                        took = True
            except Exception as e:  # noqa: BLE001 - a report a part cannot take must not stop the view
                self._failed(part, kind, e)
        return took

    def _failed(self, part: str, kind: str, error: Exception) -> None:
        """A part failed on an event (a value of a type it did not expect): counted, warned once."""
        if part not in self.failures:
            logger.warning("job view: the %s part could not take a %s event (%s: %s); such events are "
                           "counted in its snapshot's 'failures'", part, kind, type(error).__name__, error)
        self.failures[part] = self.failures.get(part, 0) + 1

    def flush(self, now: float) -> None:
        """Close the series' seconds that ended by ``now`` and persist them (when recording)."""
        self.series.close_before(now)
        if self.store is not None:
            self.store.flush()

    def close(self) -> None:
        """Close every open second and persist it; the view is read-only from then on."""
        self.flush(math.inf)
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ reads
    def snapshot(self) -> JSON:
        return {"seq": self.seq, "ts": self.ts, **{fold.name: fold.snapshot() for fold in self.folds},
                "series": self.series.snapshot(), "failures": dict(self.failures)}

    def part(self, name: str) -> Part:
        """The part called ``name`` (e.g. ``"datasets"``, whose ``view`` also holds the live previews)."""
        for part in self.parts:
            if part.name == name:
                return part
        raise ViewQueryError(f"expected one of {', '.join(p.name for p in self.parts)}; got {name!r}", key="part",
                             expected="a part of the view", got=name)

    def page(self, part: str, kind: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """Rows ``offset`` .. ``offset + limit`` of one of a part's lists (``{"total", "offset", "items"}``)."""
        paged = {p.name: p for p in self.parts if isinstance(p, Paged)}
        found = paged.get(part)
        if found is None or kind not in found.row_kinds:
            lists = sorted(f"{name}/{k}" for name, p in paged.items() for k in p.row_kinds)
            raise ViewQueryError(f"expected one of {', '.join(lists)}; got {part}/{kind}", key="page",
                                 expected="PART/KIND", got=f"{part}/{kind}")
        return page(found.rows(kind), offset, limit)

    def points(self, part: str, subject: str, measure: str = "", level: int = 0) -> dict[str, Any]:
        """The points of one series at one level (0: 1 s, see :data:`torchrt.view.series.LEVELS`)."""
        return self.series.points(part, subject, measure, level)

    # ----------------------------------------------------------------- replay
    @classmethod
    def replay(cls, run_dir: Path, persist: bool = False, health: WriteHealth | None = None) -> JobView:
        """The view of a run rebuilt from its directory alone. ``persist``: go on recording its
        series there (a coordinator started again on the run directory)."""
        view = cls()
        segment = store.load(Path(run_dir), view.series)
        for event in read_events(Path(run_dir)):
            view.apply(event, series=False)
        if persist:
            view.store = store.SeriesStore(Path(run_dir), view.series, segment, health=health)
        return view
