"""``/metrics``: the job view's snapshot in Prometheus' text format.

A custom :class:`prometheus_client.registry.Collector` reads the source's (cached) snapshot at
each scrape and yields gauges and counters from it; nothing is counted in process-global
metrics, so two apps in one process (tests, the benchmark) never mix, and the figures are the
view's own (live or as of the replay's end). Every family is prefixed ``torchrt_``:

| metric | labels | from the snapshot |
|---|---|---|
| ``torchrt_workers`` | ``state`` | workers.by_state |
| ``torchrt_world_size`` | | workers.world_size |
| ``torchrt_nodes`` | ``status`` | rendezvous.nodes.by_status |
| ``torchrt_rounds_total`` | | rendezvous.rounds_total |
| ``torchrt_samples_per_second`` | | workers.progress.samples_per_s |
| ``torchrt_step_seconds`` | ``stat`` (median, max) | workers.progress.step_ms |
| ``torchrt_checkpoint_mbytes_per_second`` | | the last committed checkpoint's mb_s |
| ``torchrt_checkpoint_latest_step`` | | checkpoints.latest_step |
| ``torchrt_checkpoints_committed_total`` / ``_problems_total`` / ``_restores_total`` | | checkpoints |
| ``torchrt_barrier_wait_seconds`` | ``barrier``, ``quantile`` (0.5, 1) | barriers.names p50/max |
| ``torchrt_node_cpu_percent`` | ``stat`` (mean, max) | machines.cpu_percent |
| ``torchrt_node_memory_percent_max`` | | machines.mem_percent_max |
| ``torchrt_alerts_open`` | ``type`` | workers.alerts.counts (ranks under an alert now) |
| ``torchrt_alerts_total`` | ``type`` | alerts.counts |
| ``torchrt_events_total`` | | seq (events logged) |

A value the snapshot does not have yet (no step reported) is left out, not reported as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.sources import ViewSource

logger = logging.getLogger(__name__)

__all__ = ["SnapshotCollector", "metrics_view"]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _get(snapshot: Mapping[str, Any], *path: str) -> Any:
    value: Any = snapshot
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _gauge(name: str, doc: str, value: Any, scale: float = 1.0) -> Iterator[Metric]:
    number = _num(value)
    if number is not None:
        yield GaugeMetricFamily(name, doc, value=number * scale)


def _labelled(family: GaugeMetricFamily | CounterMetricFamily, label_values: Mapping[str, Any],
              scale: float = 1.0) -> Iterator[Metric]:
    """``family`` with one sample per (label value, number) in ``label_values`` (others skipped)."""
    if isinstance(label_values, Mapping):
        for label, value in sorted(label_values.items()):
            if _num(value) is not None:
                family.add_metric([str(label)], _num(value) * scale)
    yield family


class SnapshotCollector(Collector):
    """The families of the module docstring, from ``snapshot()`` at each scrape."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield from _labelled(GaugeMetricFamily("torchrt_workers", "Workers by state", labels=["state"]),
                             _get(s, "workers", "by_state") or {})
        yield from _gauge("torchrt_world_size", "Ranks in the current round", _get(s, "workers", "world_size"))
        yield from _labelled(GaugeMetricFamily("torchrt_nodes", "Nodes by status", labels=["status"]),
                             _get(s, "rendezvous", "nodes", "by_status") or {})
        rounds = _num(_get(s, "rendezvous", "rounds_total"))
        if rounds is not None:
            yield CounterMetricFamily("torchrt_rounds", "Rendezvous rounds completed", value=rounds)
        progress = _get(s, "workers", "progress") or {}
        yield from _gauge("torchrt_samples_per_second", "Job samples per second", progress.get("samples_per_s"))
        yield from _labelled(GaugeMetricFamily("torchrt_step_seconds", "Step time over ranks", labels=["stat"]),
                             progress.get("step_ms") or {}, scale=1e-3)
        committed = _get(s, "checkpoints", "committed") or []
        last = committed[-1] if isinstance(committed, list) and committed else {}
        yield from _gauge("torchrt_checkpoint_mbytes_per_second", "Write throughput of the last committed "
                          "checkpoint (MB/s)", last.get("mb_s") if isinstance(last, Mapping) else None)
        yield from _gauge("torchrt_checkpoint_latest_step", "Step of the last committed checkpoint",
                          _get(s, "checkpoints", "latest_step"))
        for key, doc in (("committed_total", "Checkpoints committed"), ("problems_total", "Checkpoint problems"),
                         ("restores_total", "Checkpoint restores of the job (its ranks restoring one step: one)")):
            value = _num(_get(s, "checkpoints", key))
            if value is not None:
                yield CounterMetricFamily(f"torchrt_checkpoints_{key.removesuffix('_total')}", doc, value=value)
        yield self._barriers(_get(s, "barriers", "names") or [])
        yield from _labelled(GaugeMetricFamily("torchrt_node_cpu_percent", "Node CPU over nodes", labels=["stat"]),
                             _get(s, "machines", "cpu_percent") or {})
        yield from _gauge("torchrt_node_memory_percent_max", "Highest node memory use (%)",
                          _get(s, "machines", "mem_percent_max"))
        yield from _labelled(GaugeMetricFamily("torchrt_alerts_open", "Ranks under an alert now, by type",
                                               labels=["type"]), _get(s, "workers", "alerts", "counts") or {})
        yield from _labelled(CounterMetricFamily("torchrt_alerts", "Alerts raised, by type", labels=["type"]),
                             _get(s, "alerts", "counts") or {})
        events = _num(s.get("seq"))
        if events is not None:
            yield CounterMetricFamily("torchrt_events", "Events logged", value=events)

    @staticmethod
    def _barriers(names: Any) -> Metric:
        family = GaugeMetricFamily("torchrt_barrier_wait_seconds", "Barrier wait: p50, p99 and max of the last report",
                                   labels=["barrier", "quantile"])
        for row in names if isinstance(names, list) else []:
            if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
                continue
            for quantile, key in (("0.5", "p50_us"), ("0.99", "p99_us"), ("1", "max_us")):
                if _num(row.get(key)) is not None:
                    family.add_metric([row["name"], quantile], _num(row[key]) * 1e-6)
        return family


def metrics_view(source: ViewSource) -> Callable[[], Response]:
    """A Flask view answering ``/metrics`` from ``source``'s snapshot (its own registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source.snapshot))

    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return metrics
