"""User metrics (``torchrt.log_metric``) as series.

``metric`` events arrive only live (they are not logged), so no fold state is
kept of them: they are samples of the series ``NAME`` of the ``metrics``
part, which is persisted and replayed with the other series. The series are
job-level: every rank's value of a name in a second is one point, whose
min/max/mean show the spread between ranks. A value that is not a finite
number is not a sample.
"""

from __future__ import annotations

from collections.abc import Iterable

from torchrt.contract import EventType
from torchrt.view.fold import Event, Sample, number

__all__ = ["MetricSource"]


class MetricSource:
    name = "metrics"
    types = frozenset({EventType.METRIC})

    def samples(self, event: Event) -> Iterable[Sample]:
        name, value = event.get("name"), number(event.get("value"))
        return ((name, "", value),) if isinstance(name, str) and value is not None else ()
