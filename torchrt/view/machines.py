"""Machines as their nodes report them: CPU, memory, disk, network, GPUs and every worker process.

The rendezvous handler in each torchrun agent samples its machine and the
worker processes the agent started (:mod:`torchrt.telemetry.node`) and reports
every sample over the node's connection: ``node_stats`` (live only, about once
a second) or ``node_status`` (the same figures, logged: the node's first
sample, one when its workers change, one every 30 s and its last word). The
handler does this, not the workers, so a plain torchrun script that never
imports torchrt shows its workers here: pid, local rank, rank, state, CPU, RSS
and the exit code when the sampler saw it.

A row per node holds its latest sample and ``state``: ``reporting``, or
``gone`` once its node left or died or the coordinator shut down (or a new
coordinator took over a run whose last one crashed: its connections died with
it; a node that reconnects reports again). As in
:class:`~torchrt.view.workers.WorkersFold`, the live samples are not in the
record, so a row that goes ``gone`` goes back to its node's last logged sample:
a view replayed from the run directory then holds the same rows as the live one.

Bounds: a row keeps the known fields only (:data:`NODE_FIELDS`), at most
:data:`MAX_WORKERS` worker processes and :data:`MAX_GPUS` GPUs. The snapshot is
a summary at any number of nodes (nodes by state, the nodes' CPU mean and max,
the highest memory use, worker processes by state with their summed CPU and
RSS, the exited ones with a non-zero code, at most :data:`SHOWN` named, and the
GPUs); the rows are a page (``rows("machines")``). As a source of series it
gives ``node/MEASURE`` (one sample per node and report), ``worker/cpu_percent``
and ``worker/rss`` (one per live worker process) and ``gpu/util_percent`` and
``gpu/mem_used`` (one per GPU), each second's point holding the spread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torchrt.contract import EVENTS, NODE_REPORTS, EventType
from torchrt.view.fold import JSON, Event, Sample, number

__all__ = ["MAX_GPUS", "MAX_WORKERS", "MachinesFold", "NODE_FIELDS", "SHOWN"]

MAX_WORKERS = 256
MAX_GPUS = 64
SHOWN = 8
NODE_FIELDS = tuple(k for k in EVENTS[EventType.NODE_STATS].fields if k not in ("node_id", "workers", "gpus"))
WORKER_FIELDS = ("pid", "local_rank", "rank", "state", "cpu_percent", "rss", "gpu_mem", "exit_code")
GPU_FIELDS = ("index", "util_percent", "mem_used", "mem_total", "error")
NODE_MEASURES = ("cpu_percent", "mem_percent", "disk_read_bps", "disk_write_bps", "net_recv_bps", "net_sent_bps")
EXITED = "exited"
_GONE = frozenset({EventType.NODE_LEFT, EventType.NODE_DEAD})
_ALL_GONE = frozenset({EventType.SHUTDOWN, EventType.COORDINATOR_RESTARTED})


def _rows(value: object, keys: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """The dicts of a report's list, with the known keys only, at most ``limit``."""
    if not isinstance(value, list):
        return []
    return [{k: item[k] for k in keys if k in item} for item in value[:limit] if isinstance(item, dict)]


class MachinesFold:
    """Each node's machine and worker processes, as last reported (see the module docstring)."""

    name = "machines"
    types = NODE_REPORTS | _GONE | _ALL_GONE
    row_kinds = ("machines",)

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.logged: dict[str, dict[str, Any]] = {}  # node -> its last logged sample

    def apply(self, event: Event) -> bool:
        kind = event.get("type")
        if kind in _ALL_GONE:
            for node_id in list(self.nodes):
                self._gone(node_id)
            return True
        if kind in _GONE:
            node_id = event.get("node")
            if not isinstance(node_id, str) or node_id not in self.nodes:
                return False
            self._gone(node_id)
            return True
        node_id = event.get("node_id")
        if not isinstance(node_id, str):
            return False
        sample = {"node_id": node_id, "state": "reporting", "reported_at": event.get("ts"),
                  **{k: event.get(k) for k in NODE_FIELDS},
                  "workers": _rows(event.get("workers"), WORKER_FIELDS, MAX_WORKERS),
                  "gpus": _rows(event.get("gpus"), GPU_FIELDS, MAX_GPUS)}
        self.nodes[node_id] = sample
        if kind == EventType.NODE_STATUS:
            self.logged[node_id] = sample
        return True

    def _gone(self, node_id: str) -> None:
        """The node's row as the record holds it: its last logged sample, ``gone``."""
        last = self.logged.get(node_id)
        if last is None:  # never logged a sample: nothing of it is in the record
            self.nodes.pop(node_id, None)
        else:
            self.nodes[node_id] = {**last, "state": "gone"}

    def samples(self, event: Event) -> Iterable[Sample]:
        if event.get("type") not in NODE_REPORTS:
            return ()
        out = [("node", measure, value) for measure in NODE_MEASURES
               if (value := number(event.get(measure))) is not None]
        for worker in _rows(event.get("workers"), WORKER_FIELDS, MAX_WORKERS):
            if worker.get("state") != EXITED:
                out += [("worker", measure, value) for measure in ("cpu_percent", "rss")
                        if (value := number(worker.get(measure))) is not None]
        for gpu in _rows(event.get("gpus"), GPU_FIELDS, MAX_GPUS):
            out += [("gpu", measure, value) for measure in ("util_percent", "mem_used")
                    if (value := number(gpu.get(measure))) is not None]
        return out

    def snapshot(self) -> JSON:
        by_state: dict[str, int] = {}
        workers: dict[str, int] = {}
        cpus, mems, rss, cpu, failed, exited = [], [], 0.0, 0.0, [], 0
        gpus = {"count": 0, "util_percent": [], "mem_used": 0.0, "mem_total": 0.0}
        for row in self.nodes.values():
            by_state[row["state"]] = by_state.get(row["state"], 0) + 1
            if row["state"] != "reporting":
                continue
            if (value := number(row.get("cpu_percent"))) is not None:
                cpus.append(value)
            if (value := number(row.get("mem_percent"))) is not None:
                mems.append(value)
            for worker in row["workers"]:
                state = str(worker.get("state"))
                workers[state] = workers.get(state, 0) + 1
                if state == EXITED:
                    exited += 1
                    if worker.get("exit_code") not in (None, 0) and len(failed) < SHOWN:
                        failed.append({"node_id": row["node_id"], **worker})
                    continue
                rss += number(worker.get("rss")) or 0.0
                cpu += number(worker.get("cpu_percent")) or 0.0
            for gpu in row["gpus"]:
                gpus["count"] += 1
                if (value := number(gpu.get("util_percent"))) is not None:
                    gpus["util_percent"].append(value)
                gpus["mem_used"] += number(gpu.get("mem_used")) or 0.0
                gpus["mem_total"] += number(gpu.get("mem_total")) or 0.0
        utils = gpus.pop("util_percent")
        gpus["util_percent_mean"] = round(sum(utils) / len(utils), 2) if utils else None
        return {"nodes": by_state,
                "cpu_percent": {"mean": round(sum(cpus) / len(cpus), 2) if cpus else None,
                                "max": max(cpus, default=None)},
                "mem_percent_max": max(mems, default=None),
                "workers": {"total": sum(workers.values()), "by_state": workers, "rss": int(rss),
                            "cpu_percent": round(cpu, 2), "exited": exited, "failed": failed},
                "gpus": gpus}

    def rows(self, kind: str) -> Sequence[JSON]:
        return [self.nodes[node_id] for node_id in sorted(self.nodes)]
