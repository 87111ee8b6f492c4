"""Alerts: what went wrong, as the record tells it, newest last and bounded.

Today these are the problem events the coordinator and the workers already
record (an internal error, a run directory that could not be written, a
worker's telemetry dropped or refused, a node rejected, dead or timed out, a
checkpoint that failed); the fold counts them by type and keeps the last
:data:`KEEP` with their fields (strings cut at :data:`MAX_TEXT` characters).
Straggler and stall alerts, raised and cleared per rank, will join them here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from torchrt.contract import EventType
from torchrt.view.fold import JSON, Event

__all__ = ["AlertsFold", "KEEP", "MAX_TEXT", "SHOWN"]

KEEP = 200
SHOWN = 20
MAX_TEXT = 500


def _cut(value: Any) -> Any:
    return value[:MAX_TEXT] if isinstance(value, str) else value


class AlertsFold:
    """Counts of problem events by type and the most recent ones (see the module docstring)."""

    name = "alerts"
    types = frozenset({EventType.ERROR, EventType.RUN_DIR_ERROR, EventType.TELEMETRY_DROPPED,
                       EventType.REPORT_REFUSED, EventType.NODE_REJECTED, EventType.NODE_DEAD,
                       EventType.ROUND_TIMEOUT, EventType.CHECKPOINT_FAILED})
    row_kinds = ("recent",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=KEEP)

    def apply(self, event: Event) -> bool:
        kind = str(event.get("type"))
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.recent.append({k: _cut(v) for k, v in event.items()} | {"type": kind})
        return True

    def snapshot(self) -> JSON:
        return {"total": sum(self.counts.values()), "counts": dict(self.counts), "recent": list(self.recent)[-SHOWN:]}

    def rows(self, kind: str) -> Sequence[JSON]:
        return list(self.recent)
