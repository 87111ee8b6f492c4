"""Metric series with bounded memory whatever the run length.

A series is a ladder of rings, one per :data:`LEVELS` entry: 1 s points for
the last 15 min, 10 s points for the last 3 h, 1 min points for the last day
and 10 min points for the last week; older points fall off the last ring.
Every point is an aggregate ``(t, count, min, max, sum, last)`` of the samples
of its bucket (``t`` its start, Unix seconds; the mean is ``sum / count``), so
a coarse point says honestly what the fine ones said: the slowest barrier of
an hour is still its max, not a mean of means.

Samples go into the open 1 s bucket (bucketed by their own ``ts``). A bucket
*closes* when a sample of a later second arrives or when the owner calls
:meth:`SeriesBook.close_before` (the coordinator's tick; the clock is passed
in); a closed 1 s point is pushed onto the first ring and merged into the open
bucket of every coarser ring (*cascade*). A late sample, of a second already
closed, counts in the open bucket (its time moves forward by at most the
lateness; nothing is dropped). Restoring (:meth:`Series.absorb`) pushes the
same closed 1 s points through the same cascade, so a restored series equals
the live one bit for bit.

Memory bound, per series: :data:`POINTS_PER_SERIES` points (900 + 1,080 +
1,440 + 1,008 = 4,428) of :data:`POINT_BYTES` (48) bytes each, in ``array('d')``
storage that grows to at most 1/16 over what it holds, plus the open buckets
and object headers: at most :data:`SERIES_MAX_BYTES` (230,000) bytes, whether
the run lasts a minute or a year.

A series is named by a *subject* (a barrier, a dataset, a user metric: names
that users choose) and a *measure* fixed in code (``p50_us``, ``samples_per_s``;
``""`` for a user metric). Subjects go through a part's
:class:`~torchrt.view.names.NameTable` (at most ``cap`` of them plus ``other``;
a name that changes every step costs at most 9), measures are a handful per
part, so a part's bound is ``(cap + 1) x measures x SERIES_MAX_BYTES``: with
the default cap of 64 and the barriers' 2 measures, 30 MB once every series is
a week full; a week-long run with 20 series holds 4.6 MB.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Iterator
from typing import Any

from torchrt.view.fold import JSON, ViewQueryError
from torchrt.view.names import OTHER, NameTable

__all__ = ["DEFAULT_CAP", "LEVELS", "Level", "POINTS_PER_SERIES", "POINT_BYTES", "Point", "SERIES_MAX_BYTES",
           "Series", "SeriesBook", "SeriesSet", "series_name"]

Point = list[float]  # [t, count, min, max, sum, last]
STRIDE = 6
POINT_BYTES = 8 * STRIDE


@dataclasses.dataclass(frozen=True)
class Level:
    resolution_s: int
    capacity: int  # points kept

    @property
    def span_s(self) -> int:
        return self.resolution_s * self.capacity


LEVELS = (Level(1, 900), Level(10, 1080), Level(60, 1440), Level(600, 1008))
POINTS_PER_SERIES = sum(level.capacity for level in LEVELS)
SERIES_MAX_BYTES = 230_000  # POINTS_PER_SERIES x POINT_BYTES x 17/16 + open buckets and headers (< 4 KB)
DEFAULT_CAP = 64


class _Ring:
    """The closed points of one level, oldest overwritten first, and its open bucket."""

    __slots__ = ("resolution", "capacity", "data", "head", "open")

    def __init__(self, level: Level) -> None:
        self.resolution = float(level.resolution_s)
        self.capacity = level.capacity
        self.data = array("d")
        self.head = 0  # the oldest point, once the ring is full
        self.open: Point | None = None

    def __len__(self) -> int:
        return len(self.data) // STRIDE

    def push(self, point: Point) -> None:
        data = self.data
        if len(data) < self.capacity * STRIDE:
            data.extend(point)
            return
        base = self.head * STRIDE
        for i in range(STRIDE):
            data[base + i] = point[i]
        self.head = (self.head + 1) % self.capacity

    def closed(self) -> list[float]:
        """The closed points, oldest first, flat."""
        cut = self.head * STRIDE
        return self.data[cut:].tolist() + self.data[:cut].tolist()

    def last_closed(self) -> Point | None:
        if not self.data:
            return None
        newest = (self.head - 1) % len(self)
        return self.data[newest * STRIDE:(newest + 1) * STRIDE].tolist()

    def load(self, flat: list[float], open_point: Point | None) -> None:
        if len(flat) % STRIDE or len(flat) > self.capacity * STRIDE:
            raise ValueError(f"expected at most {self.capacity} points of {STRIDE} numbers, got {len(flat)} numbers")
        self.data, self.head = array("d", flat), 0
        self.open = None if open_point is None else _point(open_point)


def _merge(into: Point, point: Point) -> None:
    into[1] += point[1]
    if point[2] < into[2]:
        into[2] = point[2]
    if point[3] > into[3]:
        into[3] = point[3]
    into[4] += point[4]
    into[5] = point[5]


def _point(values: Any) -> Point:
    if not isinstance(values, list) or len(values) != STRIDE:
        raise ValueError(f"expected a point of {STRIDE} numbers, got {values!r}")
    return [float(v) for v in values]


class Series:
    """One metric over time at every level of :data:`LEVELS` (see the module docstring)."""

    __slots__ = ("rings", "next_t", "unsaved")

    def __init__(self) -> None:
        self.rings = tuple(_Ring(level) for level in LEVELS)
        self.next_t = -math.inf  # the first second not closed yet
        self.unsaved = 0         # closed 1 s points not yet persisted (see torchrt.view.store)

    def add(self, t: float, value: float) -> None:
        """One sample at Unix time ``t``."""
        ring = self.rings[0]
        bucket = ring.open
        if bucket is not None and t < bucket[0] + 1.0:  # the open second's (or late): merged in place
            bucket[1] += 1.0
            if value < bucket[2]:
                bucket[2] = value
            elif value > bucket[3]:
                bucket[3] = value
            bucket[4] += value
            bucket[5] = value
            return
        second = max(float(math.floor(t)), self.next_t)
        if bucket is not None and second > bucket[0]:
            self._close()
            bucket = None
        if bucket is None:
            ring.open = [second, 1.0, value, value, value, value]
        else:
            _merge(bucket, [second, 1.0, value, value, value, value])

    def close_before(self, t: float) -> None:
        """Close the open 1 s bucket if it ends at or before ``t``."""
        bucket = self.rings[0].open
        if bucket is not None and bucket[0] + 1 <= t:
            self._close()

    def absorb(self, point: Point) -> bool:
        """Take a closed 1 s point (restoring); False (ignored) when it is not newer than what is here."""
        if point[0] < self.next_t or self.rings[0].open is not None:
            return False
        self._push(point)
        return True

    def _close(self) -> None:
        ring = self.rings[0]
        assert ring.open is not None
        point, ring.open = ring.open, None
        self._push(point)
        self.unsaved += 1

    def _push(self, point: Point) -> None:
        self.rings[0].push(point)
        self.next_t = point[0] + 1
        for ring in self.rings[1:]:
            start = point[0] - point[0] % ring.resolution
            bucket = ring.open
            if bucket is not None and start <= bucket[0]:
                _merge(bucket, point)
                continue
            if bucket is not None:
                ring.push(bucket)
            ring.open = [start, *point[1:]]

    # ----------------------------------------------------------------- reading
    def last(self) -> list[float] | None:
        """``[t, value]`` of the newest sample."""
        point = self.rings[0].open or self.rings[0].last_closed()
        return None if point is None else [point[0], point[5]]

    def unsaved_points(self) -> tuple[list[Point], bool]:
        """The closed 1 s points not yet persisted, oldest first, and whether that is all of them
        (False when more closed than the first ring holds since the last time)."""
        ring = self.rings[0]
        held = len(ring)
        count = min(self.unsaved, held)
        data = ring.data
        points = []
        for k in range(ring.head - count, ring.head):
            base = (k % held) * STRIDE
            points.append(data[base:base + STRIDE].tolist())
        return points, count == self.unsaved

    def points(self, level: int = 0) -> dict[str, Any]:
        """One level's points, columnar, oldest first; the last one is the open bucket when ``partial``."""
        ring = self.rings[level]
        flat = ring.closed()
        rows = [flat[i:i + STRIDE] for i in range(0, len(flat), STRIDE)]
        if ring.open is not None:
            rows.append(list(ring.open))
        return {"resolution_s": LEVELS[level].resolution_s, "partial": ring.open is not None,
                "t": [r[0] for r in rows], "count": [int(r[1]) for r in rows], "min": [r[2] for r in rows],
                "max": [r[3] for r in rows], "mean": [r[4] / r[1] for r in rows], "last": [r[5] for r in rows]}

    def dump(self) -> dict[str, Any]:
        """Every ring's closed points and the coarser rings' open buckets (the open 1 s bucket is
        persisted once it closes)."""
        return {"next_t": self.next_t if math.isfinite(self.next_t) else None,
                "rings": [ring.closed() for ring in self.rings],
                "open": [None] + [ring.open for ring in self.rings[1:]]}

    def load(self, data: Any) -> None:
        if not isinstance(data, dict) or len(data.get("rings") or ()) != len(LEVELS) \
                or len(data.get("open") or ()) != len(LEVELS):
            raise ValueError(f"expected {{'next_t', 'rings', 'open'}} with {len(LEVELS)} levels")
        for ring, flat, open_point in zip(self.rings, data["rings"], data["open"]):
            ring.load([float(v) for v in flat], open_point)
        next_t = data.get("next_t")
        self.next_t = -math.inf if next_t is None else float(next_t)
        self.unsaved = 0


def series_name(subject: str, measure: str) -> str:
    """How a series is shown: ``SUBJECT/MEASURE`` (``SUBJECT`` alone for a measure of "")."""
    return f"{subject}/{measure}" if measure else subject


class SeriesSet:
    """One part's series, keyed by (subject, measure); subjects bounded by a :class:`NameTable`."""

    def __init__(self, part: str, cap: int = DEFAULT_CAP) -> None:
        self.names = NameTable(cap, f"series subjects of {part!r}")
        self.series: dict[tuple[str, str], Series] = {}

    def named(self, subject: str, measure: str) -> tuple[Series, bool]:
        """The series a sample of ``subject`` (as given) goes to, and whether the subject has its
        own place in the table (False: it was folded into ``other``, and counted as such)."""
        key = self.names.key(subject)
        return self.get(key, measure), key != OTHER

    def get(self, subject: str, measure: str) -> Series:
        """The series of ``subject`` (a table key already) and ``measure``, created when new."""
        series = self.series.get((subject, measure))
        if series is None:
            self.names.adopt(subject)
            series = self.series[(subject, measure)] = Series()
        return series


class SeriesBook:
    """Every part's series: what the view keeps of metrics over time."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self.sets: dict[str, SeriesSet] = {}
        # (part, subject as given, measure) -> its series: one lookup per sample once a name is known
        # (a name's table key never changes once decided; a sample folded into "other" is not
        # remembered here, so that every one of them is counted)
        self._known: dict[tuple[str, str, str], Series] = {}

    def set(self, part: str) -> SeriesSet:
        found = self.sets.get(part)
        if found is None:
            found = self.sets[part] = SeriesSet(part, self.cap)
        return found

    def add(self, part: str, subject: str, measure: str, t: float, value: float) -> None:
        series = self._known.get((part, subject, measure))
        if series is None:
            series, placed = self.set(part).named(subject, measure)
            if placed:
                self._known[(part, subject, measure)] = series
        series.add(t, value)

    def close_before(self, t: float) -> None:
        for _, _, _, series in self.each():
            series.close_before(t)

    def each(self) -> Iterator[tuple[str, str, str, Series]]:
        for part, found in self.sets.items():
            for (subject, measure), series in found.series.items():
                yield part, subject, measure, series

    def snapshot(self) -> JSON:
        """Per part: each series' newest ``[t, value]`` by ``SUBJECT/MEASURE``, and how many samples
        went to ``other`` because the part had ``cap`` subjects already."""
        return {part: {"folded": found.names.folded,
                       "last": {series_name(*key): series.last() for key, series in found.series.items()}}
                for part, found in self.sets.items()}

    def points(self, part: str, subject: str, measure: str = "", level: int = 0) -> dict[str, Any]:
        found = self.sets.get(part)
        series = found.series.get((subject, measure)) if found is not None else None
        if series is None:
            held = sorted(f"{p}:{series_name(s, m)}" for p, s, m, _ in self.each())
            raise ViewQueryError(f"no series {series_name(subject, measure)!r} of {part!r}; there are: "
                                 f"{', '.join(held) or 'none'}", key="series", expected="a series the view holds",
                                 got=f"{part}:{series_name(subject, measure)}")
        if not 0 <= level < len(LEVELS):
            raise ViewQueryError(f"expected a level in [0, {len(LEVELS)}), got {level!r}", key="level",
                                 expected=f"0..{len(LEVELS) - 1}", got=level)
        return series.points(level)

    def dump(self) -> dict[str, Any]:
        return {part: {"folded": found.names.folded,
                       "series": [[subject, measure, series.dump()]
                                  for (subject, measure), series in found.series.items()]}
                for part, found in self.sets.items()}

    def load(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ValueError("expected {part: {'folded', 'series'}}")
        for part, entry in data.items():
            found = self.set(str(part))
            found.names.folded = int(entry.get("folded", 0))
            for subject, measure, dumped in entry.get("series") or ():
                found.get(str(subject), str(measure)).load(dumped)
