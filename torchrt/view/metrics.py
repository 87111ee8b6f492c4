"""User metrics (``torchrt.log_metric``, and the loss and scalars of ``torchrt.step``) as series.

``metric`` events arrive only live (they are not logged), so no fold state is
kept of them: they are samples of the series ``NAME`` of the ``metrics``
part, which is persisted and replayed with the other series. A step report
(``step`` / ``step_progress``, one per rank and reporter window) gives the
series ``loss`` and one per user scalar, from the window's last values, so
``torchrt.step(loss=l, acc=a)`` and ``log_metric("loss", l, ...)`` land in the
same place. The series are job-level: every rank's value of a name in a second
is one point, whose min/max/mean show the spread between ranks. A value that
is not a finite number is not a sample.
"""

from __future__ import annotations

from collections.abc import Iterable

from torchrt.contract import STEP_REPORTS, EventType
from torchrt.view.fold import Event, Sample, number

__all__ = ["MetricSource"]


class MetricSource:
    name = "metrics"
    types = frozenset({EventType.METRIC}) | STEP_REPORTS

    def samples(self, event: Event) -> Iterable[Sample]:
        if event.get("type") in STEP_REPORTS:
            scalars = event.get("scalars")
            named = [("loss", event.get("loss"))] + (list(scalars.items()) if isinstance(scalars, dict) else [])
            return [(name, "", value) for name, raw in named
                    if isinstance(name, str) and (value := number(raw)) is not None]
        name, value = event.get("name"), number(event.get("value"))
        return ((name, "", value),) if isinstance(name, str) and value is not None else ()
