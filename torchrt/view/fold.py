"""What a part of the job view is: a fold over events, a source of series samples, or both.

A *fold* keeps one concern's state (nodes and rounds, workers, barriers, a
feature's records) and changes it one event at a time::

    name: str                 its key in the view's snapshot
    types: frozenset[str]     the event types it wants (the view dispatches on them)
    apply(event) -> bool      True when it took the event (well formed, of its concern)
    snapshot() -> JSON        plain JSON-able data, bounded whatever the job's size

A *source* turns events into samples of metric series (``samples(event)``
yields ``(subject, measure, value)``: the subject a name users choose, such as a
barrier's or a dataset's, the measure one fixed in code, such as ``p50_us``);
the view keeps the series (bounded, see
:mod:`torchrt.view.series`), so a fold never holds history itself. A fold that
also has ``rows(kind)`` serves the long lists behind its snapshot a page at a
time (:func:`page`): a snapshot summarises per-rank detail so that it stays
small at a thousand ranks.

Folds never read the clock: times come from the events (``ts``), which makes
every rule testable in microseconds and a replay equal to the live view. A
fold's snapshot must depend only on *logged* events (those that reach
``events.jsonl``); what arrives only live (user metrics, sample previews)
may feed series, which are persisted on their own, or state the snapshot
leaves out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from torchrt.errors import FieldError

__all__ = ["Event", "Fold", "JSON", "Paged", "Sample", "Source", "ViewQueryError", "fields_of", "number", "page"]

Event = dict[str, Any]
JSON = Any
Sample = tuple[str, str, float]  # (subject, measure, value)
# Fields every logged event has; a fold's records leave out what the record itself implies.
ENVELOPE = ("type", "seq", "ts")


@runtime_checkable
class Fold(Protocol):
    name: str
    types: frozenset[str]

    def apply(self, event: Event) -> bool: ...

    def snapshot(self) -> JSON: ...


@runtime_checkable
class Source(Protocol):
    name: str
    types: frozenset[str]

    def samples(self, event: Event) -> Iterable[Sample]: ...


@runtime_checkable
class Paged(Protocol):
    row_kinds: tuple[str, ...]

    def rows(self, kind: str) -> Sequence[JSON]: ...


class ViewQueryError(FieldError):
    """A query of the view (a page, a series) that names something the view does not have."""


def page(rows: Sequence[JSON], offset: int, limit: int) -> dict[str, Any]:
    """``{"total", "offset", "items"}``: ``limit`` rows from ``offset`` (both clamped to >= 0)."""
    offset, limit = max(0, offset), max(0, limit)
    return {"total": len(rows), "offset": offset, "items": list(rows[offset:offset + limit])}


def number(value: object) -> float | None:
    """``value`` as a finite float, or None (a bool, a string, NaN and infinities are not numbers here).

    Called a dozen times and more per report at a thousand reports a second, so the exact types that
    JSON gives come first (``type() is``: one comparison, no ``isinstance`` chain)."""
    kind = type(value)
    if kind is float:
        return value if _isfinite(value) else None  # type: ignore[arg-type]
    if kind is int:
        value = float(value)  # type: ignore[arg-type]
        return value if _isfinite(value) else None
    if kind is bool or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if _isfinite(value) else None


_isfinite = math.isfinite


def fields_of(event: Event, drop: Iterable[str] = ()) -> dict[str, Any]:
    """The event's own fields: without the envelope (type, seq, ts) and ``drop``."""
    skip = set(ENVELOPE).union(drop)
    return {k: v for k, v in event.items() if k not in skip}
