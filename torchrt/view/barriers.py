"""Barriers as the record tells them: one row per barrier name, bounded.

Rank 0 reports ``torchrt.barrier`` completions once per name and second
(``barrier``: completions, p50, p99 and max wait). The fold keeps per name the
reports, completions, the newest p50/p99/max and the worst max seen; the series
``NAME/p50_us``, ``NAME/p99_us`` and ``NAME/max_us`` keep them over time (a report
without a p99, from an older worker, has its max stand in for it). Names go through a
:class:`~torchrt.view.names.NameTable` (:data:`CAP` names): a barrier named per
step (``"step-123"``) is one row ``"step-#"``, not one per step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torchrt.contract import EventType
from torchrt.view.fold import JSON, Event, Sample, number
from torchrt.view.names import NameTable

__all__ = ["BarriersFold", "CAP"]

CAP = 64


def _waits(event: Event) -> tuple[float | None, float | None, float | None]:
    """(p50, p99, max) in microseconds; ``latency_us`` is the slowest wait when the others are missing."""
    slowest = number(event.get("latency_us"))
    p50, p99, worst = number(event.get("p50_us")), number(event.get("p99_us")), number(event.get("max_us"))
    worst = worst if worst is not None else slowest
    return (p50 if p50 is not None else slowest), (p99 if p99 is not None else worst), worst


class BarriersFold:
    """Per barrier name: completions and wait times (see the module docstring)."""

    name = "barriers"
    types = frozenset({EventType.BARRIER})

    def __init__(self, cap: int = CAP) -> None:
        self.names = NameTable(cap, "barrier names")
        self.records: dict[str, dict[str, Any]] = {}

    def apply(self, event: Event) -> bool:
        name = event.get("name")
        p50, p99, worst = _waits(event)
        if not isinstance(name, str) or p50 is None or worst is None:
            return False
        key = self.names.key(name)
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = {"name": key, "reports": 0, "completions": 0, "worst_us": worst}
        completions = event.get("completions")
        record["reports"] += 1
        record["completions"] += completions if isinstance(completions, int) else 1
        record.update(p50_us=p50, p99_us=p99, max_us=worst, worst_us=max(record["worst_us"], worst),
                      world_size=event.get("world_size"), last_at=event.get("ts"))
        return True

    def samples(self, event: Event) -> Iterable[Sample]:
        name = event.get("name")
        p50, p99, worst = _waits(event)
        if not isinstance(name, str) or p50 is None or p99 is None or worst is None:
            return ()
        return ((name, "p50_us", p50), (name, "p99_us", p99), (name, "max_us", worst))

    def snapshot(self) -> JSON:
        return {"folded": self.names.folded, "names": [dict(r) for r in self.records.values()]}
