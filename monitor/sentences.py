"""What an event says, in one sentence: the timeline's labels and the first line of a Logs row.

One template per event type, over the event's fields by name. A field the event lacks reads
"?", and a float reads with four significant figures, as a whole number from 1,000 up
(``27.12``, ``0.0307``, ``4547``). A type without a template has no sentence; the Logs
show its fields alone. :func:`presented` is an event as the monitor hands it to a page (the
``/api/v1/events`` items, the live updates' events): the event itself, its ``level`` and,
where there is one, its sentence as ``what``.
"""

from __future__ import annotations

import math
import string
from typing import Any

from torchrt.contract import EVENT_LEVELS, EventType, Level

__all__ = ["MAX_CHARS", "SENTENCES", "level_of", "presented", "sentence"]

E = EventType
MAX_CHARS = 300
SENTENCES: dict[EventType, str] = {
    E.COORDINATOR_STARTED: "coordinator started at {endpoint}",
    E.COORDINATOR_RESTARTED: "coordinator restarted on the record (clean before: {clean})",
    E.JOB_CONFIGURED: "job {run_id} configured: {min_nodes}-{max_nodes} nodes, backend {backend}",
    E.NODE_JOINED: "node {node} joined ({device_count} {device_kind} devices, torch {torch})",
    E.NODE_WAITING: "node {node} waits for round {round}",
    E.NODE_LEFT: "node {node} left: {reason}",
    E.ROUND_STARTED: "round {round} needed: {reason}",
    E.ROUND_COMPLETED: "round {round} formed: {world_size} node(s) in {total_s} s",
    E.ROUND_TIMEOUT: "node {node} waited {waited_s} s for a round",
    E.RENDEZVOUS_CLOSED: "rendezvous closed by {by}",
    E.RESTART: "node {node} restarted its workers: {reason}",
    E.NODE_DEAD: "node {node} dead: {reason}",
    E.WORKER_STARTED: "rank {rank} started in round {round} (pid {pid}, {backend})",
    E.WORKER_STOPPED: "rank {rank} stopped: {reason}",
    E.BARRIER: "barrier {name} met by {world_size} ranks: p50 {p50_us} µs, max {max_us} µs",
    E.CHECKPOINT_SAVED: "rank {rank} saved its shard of step {step} ({mb_s} MB/s, stall {stall_s} s)",
    E.CHECKPOINT_COMMITTED: "checkpoint of step {step} committed ({mb_s} MB/s)",
    E.CHECKPOINT_FAILED: "checkpoint of step {step} failed on rank {rank}: {error}",
    E.CHECKPOINT_SKIPPED: "checkpoint of step {step} skipped: {reason}",
    E.CHECKPOINT_RESTORED: "rank {rank} restored step {step}",
    E.DATASET_REGISTERED: "rank {rank} registered dataset {dataset} ({size} samples)",
    E.DATA_RESUMED: "rank {rank} resumed dataset {dataset} at epoch {epoch}, position {position}",
    E.RANK_STRAGGLING: "rank {rank} straggling: {measure} {value_ms} ms, the others' {median_ms} ms (x{ratio})",
    E.RANK_STALLED: "rank {rank} stalled at step {step}",
    E.RANK_RECOVERED: "rank {rank} recovered ({was})",
    E.STACKS_DUMPED: "stack dump {request} ({reason})",
    E.ERROR: "coordinator error in {where}: {error}",
    E.RUN_DIR_ERROR: "run directory not writable: {error}",
    E.SHUTDOWN: "coordinator shut down: {reason}",
    E.INSECURE_BIND: "coordinator reachable on {host} without a token: {warning}",
    E.NODE_REJECTED: "a node was refused ({op}): {error}",
    E.TELEMETRY_DROPPED: "{count} telemetry reports dropped",
    E.REPORT_REFUSED: "a {refused_type} report of rank {rank} refused: {why}",
    E.STEP_PROGRESS: "rank {rank} at step {step}: {step_ms} ms a step, {samples_per_s} samples/s",
    E.NODE_STATUS: "node {node_id}: CPU {cpu_percent}%, memory {mem_percent}%",
    E.DATA_PROGRESS: "rank {rank} in dataset {dataset}: epoch {epoch}, position {position} of {size}",
    E.DATA_TIMING: "rank {rank} read dataset {dataset} at {samples_per_s} samples/s, waiting {wait_fraction} of "
                   "the time",
}
_FORMATTER = string.Formatter()


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def level_of(event_type: object) -> Level:
    """The level of an event type (:data:`torchrt.contract.EVENT_LEVELS`; info when not listed)."""
    try:
        return EVENT_LEVELS.get(EventType(event_type), Level.INFO)
    except ValueError:
        return Level.INFO


def sentence(event: dict[str, Any]) -> str | None:
    """The event's sentence (at most MAX_CHARS), or None for a type without a template."""
    template = SENTENCES.get(event.get("type"))  # type: ignore[call-overload]  # a str enum: the plain name finds it
    if template is None:
        return None
    fields = _Fields({k: _shown(v) if isinstance(v, float) else v for k, v in event.items()})
    return _FORMATTER.vformat(template, (), fields)[:MAX_CHARS]


def _shown(value: float) -> str:
    """A float as a sentence says it: four significant figures, a whole number from 1,000 on (no
    exponent, no noise such as ``x4546.727``)."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def presented(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its ``level`` and (when its type has one) its sentence as ``what``."""
    out = {**event, "level": level_of(event.get("type")).value}
    what = sentence(event)
    if what is not None:
        out["what"] = what
    return out
