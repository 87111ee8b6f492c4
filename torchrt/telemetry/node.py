"""The node's side of telemetry: CPU, memory, disk and network of the machine, and its workers.

:class:`NodeSampler` runs in the torchrun agent, in the torchrt rendezvous
handler, on a thread of its own (:class:`NodeStatsThread`, once a second),
sending each sample as a report over the node's connection to the coordinator.
Since it runs in the agent, a plain torchrun script that never imports torchrt
still shows its workers. A sample is sent as ``node_stats`` (live only) or,
like a rank's ``step_progress``, as ``node_status`` (logged): the first one,
one whenever the workers change (a process appears, exits, its exit code is
learnt, or its row is dropped), one every :data:`LOG_INTERVAL_S`, and the
node's last word (:meth:`NodeStatsThread.stop`). The record thus holds every
worker's life at a bounded rate, and a view replayed from it ends where the
live one did.

How the agent knows its workers: torchrun starts each worker as a child process
of the agent (``subprocess.Popen``), with ``LOCAL_RANK``/``RANK`` in its
environment. :func:`agent_workers` lists the agent's children whose initial
environment (``/proc/PID/environ``, read once per process) has ``LOCAL_RANK``
and ``TORCHELASTIC_RUN_ID``, which leaves out anything else the agent may have
started.

One sample (:meth:`NodeSampler.sample`, all rates over the time since the
previous sample, so the first sample has none):

* node: CPU busy % of all cores (from ``cpu_times``, not ``cpu_percent``, whose
  state psutil keeps per process and any other caller would disturb), memory
  used, disk read/write and network receive/send bytes per second;
* per worker process: pid, local rank, rank, state (psutil's: running,
  sleeping, zombie, ..., or ``exited``), CPU % of one core (as ``top``), RSS;
  GPU memory where known; a worker that is gone stays listed as ``exited`` for
  :data:`KEEP_EXITED_S` (until a new worker of its local rank appears) with
  its exit code when known: the agent reaps its workers itself, so the sampler
  only peeks (``waitid`` with ``WNOWAIT``, which leaves the child to its
  parent) while the exited child is still a zombie, and a code the agent
  collected first is unknown (None);
* GPUs, when NVML is importable (``pynvml``, from the ``nvidia-ml-py``
  package): per device utilisation % and memory used/total, and each worker's
  GPU memory. NVML reads the driver without creating a CUDA context, which
  calling ``torch.cuda`` in the agent would do; without ``pynvml`` there is no
  ``gpus`` field (the reason is logged once).

The sampler never raises for a process that vanished between listing and
reading (psutil's ``NoSuchProcess``/``AccessDenied``): that worker is read as
exited.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from torchrt.contract import EventType

__all__ = ["KEEP_EXITED_S", "LOG_INTERVAL_S", "GpuProbe", "NodeSampler", "NodeStatsThread", "agent_workers",
           "exit_code"]

logger = logging.getLogger(__name__)

KEEP_EXITED_S = 30.0
DEFAULT_INTERVAL_S = 1.0
LOG_INTERVAL_S = 30.0  # a node's sample is logged at least this often (and whenever its workers change)
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)
_WORKER_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def agent_workers(parent: psutil.Process | None = None) -> list[psutil.Process]:
    """The torchrun workers among ``parent``'s children (default: this process's)."""
    parent = parent or psutil.Process()
    found = []
    for child in parent.children(recursive=False):
        try:
            env = child.environ()
        except _GONE:
            continue
        if all(key in env for key in _WORKER_ENV):
            found.append(child)
    return found


def exit_code(pid: int) -> int | None:
    """The exit status of this process's child ``pid`` if it has exited and is not reaped yet, without
    reaping it (``-N`` for death by signal N, as ``Popen.returncode``); None otherwise."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, OSError):
        return None
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class GpuProbe:
    """NVML, if ``pynvml`` can be imported and initialised; else :attr:`error` says why."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except ImportError:
            self.error = "pynvml is not installed (pip install nvidia-ml-py)"
        except Exception as e:  # noqa: BLE001 - NVMLError of any kind: no driver, no device
            self.error = f"NVML unavailable: {e}"

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def sample(self) -> tuple[list[dict[str, Any]], dict[int, int]]:
        """Per device ``{index, util_percent, mem_used, mem_total}``, and GPU memory by pid."""
        nvml, devices, by_pid = self._nvml, [], {}
        for index, handle in enumerate(self._handles):
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                devices.append({"index": index, "util_percent": util.gpu, "mem_used": memory.used,
                                "mem_total": memory.total})
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.usedGpuMemory is not None:
                        by_pid[proc.pid] = by_pid.get(proc.pid, 0) + proc.usedGpuMemory
            except Exception as e:  # noqa: BLE001 - one device failing must not stop the sample
                devices.append({"index": index, "error": str(e)[:200]})
        return devices, by_pid


class _Worker:
    __slots__ = ("process", "local_rank", "rank", "cpu_s", "exited_at", "exit_code")

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.local_rank = self.rank = None
        try:
            env = process.environ()
            self.local_rank, self.rank = _int(env.get("LOCAL_RANK")), _int(env.get("RANK"))
        except _GONE:
            pass
        self.cpu_s: float | None = None
        self.exited_at: float | None = None
        self.exit_code: int | None = None


class NodeSampler:
    """One ``node_stats`` sample per :meth:`sample` call (see the module docstring).

    ``workers``: who the workers are now (default :func:`agent_workers`); ``gpu``: the
    :class:`GpuProbe` to read (default: a new one)."""

    def __init__(self, workers: Callable[[], Iterable[psutil.Process]] = agent_workers,
                 gpu: GpuProbe | None = None, keep_exited_s: float = KEEP_EXITED_S) -> None:
        self.workers_of = workers
        self.gpu = gpu if gpu is not None else GpuProbe()
        if not self.gpu.available:
            logger.info("torchrt: no GPU figures in node_stats: %s", self.gpu.error)
        self.keep_exited_s = keep_exited_s
        self.cpus = psutil.cpu_count() or 1
        self._workers: dict[int, _Worker] = {}
        self._previous: tuple[float, float, float, Any, Any] | None = None  # now, busy, total, disk, net

    def sample(self, now: float) -> dict[str, Any]:
        """The node's figures at ``now`` (monotonic seconds; rates are over the time since the last call)."""
        times = psutil.cpu_times()
        total = sum(times)
        busy = total - times.idle - getattr(times, "iowait", 0.0)
        memory = psutil.virtual_memory()
        disk, net = _disk(), psutil.net_io_counters()
        stats: dict[str, Any] = {"cpus": self.cpus, "mem_percent": memory.percent,
                                 "mem_used": memory.total - memory.available, "mem_total": memory.total}
        previous = self._previous
        if previous is not None:
            then, busy0, total0, disk0, net0 = previous
            elapsed = max(now - then, 1e-9)
            stats["cpu_percent"] = round(100.0 * (busy - busy0) / max(total - total0, 1e-9), 2)
            if disk is not None and disk0 is not None:
                stats["disk_read_bps"] = round((disk.read_bytes - disk0.read_bytes) / elapsed, 1)
                stats["disk_write_bps"] = round((disk.write_bytes - disk0.write_bytes) / elapsed, 1)
            stats["net_recv_bps"] = round((net.bytes_recv - net0.bytes_recv) / elapsed, 1)
            stats["net_sent_bps"] = round((net.bytes_sent - net0.bytes_sent) / elapsed, 1)
        gpu_by_pid: dict[int, int] = {}
        if self.gpu.available:
            stats["gpus"], gpu_by_pid = self.gpu.sample()
        stats["workers"] = self._sample_workers(now, None if previous is None else now - previous[0], gpu_by_pid)
        self._previous = (now, busy, total, disk, net)
        return stats

    def _sample_workers(self, now: float, elapsed: float | None, gpu_by_pid: dict[int, int]) -> list[dict[str, Any]]:
        try:
            current = {p.pid: p for p in self.workers_of()}
        except _GONE:
            current = {}
        for pid, process in current.items():
            if pid not in self._workers:
                worker = self._workers[pid] = _Worker(process)
                for old_pid, old in list(self._workers.items()):  # a restarted local rank replaces its predecessor
                    if old_pid != pid and old.exited_at is not None and old.local_rank == worker.local_rank:
                        del self._workers[old_pid]
        rows = []
        for pid, worker in sorted(self._workers.items(), key=lambda item: (item[1].local_rank is None,
                                                                             item[1].local_rank, item[0])):
            row = self._read(pid, worker, now, elapsed, alive=pid in current)
            if row is None:
                del self._workers[pid]
                continue
            if pid in gpu_by_pid:
                row["gpu_mem"] = gpu_by_pid[pid]
            rows.append(row)
        return rows

    def _read(self, pid: int, worker: _Worker, now: float, elapsed: float | None,
              alive: bool) -> dict[str, Any] | None:
        """One worker's row; None once it has been gone for longer than keep_exited_s."""
        row: dict[str, Any] = {"pid": pid, "local_rank": worker.local_rank, "rank": worker.rank}
        if worker.exited_at is None:
            try:
                with worker.process.oneshot():
                    state = worker.process.status()
                    if state != psutil.STATUS_ZOMBIE:
                        cpu = worker.process.cpu_times()
                        cpu_s = cpu.user + cpu.system
                        row.update(state=state, rss=worker.process.memory_info().rss, cpu_percent=None)
                        if worker.cpu_s is not None and elapsed:
                            row["cpu_percent"] = round(100.0 * (cpu_s - worker.cpu_s) / elapsed, 2)
                        worker.cpu_s = cpu_s
                        if alive:
                            return row
            except _GONE:
                pass
            worker.exited_at = now  # a zombie, gone, or no longer among the workers
            worker.exit_code = exit_code(pid)
        elif worker.exit_code is None:
            worker.exit_code = exit_code(pid)
        if now - worker.exited_at > self.keep_exited_s:
            return None
        return row | {"state": "exited", "exit_code": worker.exit_code}


class NodeStatsThread:
    """Samples every ``interval`` seconds on a daemon thread and hands each sample to ``send`` as
    the fields of a ``node_stats`` or ``node_status`` report (``send(type, fields)``, see the module
    docstring), which returns False when it cannot send now (no connection: the sample is dropped,
    and what was due to be logged is logged with the next one); a send that fails is logged, once."""

    def __init__(self, send: Callable[[EventType, dict[str, Any]], bool], sampler: NodeSampler | None = None,
                 interval: float = DEFAULT_INTERVAL_S, log_interval: float = LOG_INTERVAL_S) -> None:
        self.send = send
        self.sampler = sampler or NodeSampler()
        self.interval = interval
        self.log_interval = log_interval
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sample at a time: the thread's, or the last word
        self._warned = False
        self._logged_at: float | None = None
        self._workers: tuple[Any, ...] | None = None  # the workers as last logged
        self._thread = threading.Thread(target=self._run, name="torchrt-node-stats", daemon=True)

    def start(self) -> NodeStatsThread:
        self._thread.start()
        return self

    def stop(self, last_word: bool = False) -> None:
        """Stop sampling; ``last_word``: send one more sample, logged (the node is leaving)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if last_word:
            self.report(final=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.report()
            self._stop.wait(self.interval)

    def report(self, final: bool = False) -> None:
        """Take one sample and send it now (``final``: logged, the last word)."""
        try:
            with self._lock:
                now = time.monotonic()
                stats = self.sampler.sample(now)
                workers = tuple((w["pid"], w.get("state") == "exited", w.get("exit_code")) for w in stats["workers"])
                logged = (final or self._logged_at is None or now - self._logged_at >= self.log_interval
                          or workers != self._workers)
                sent = self.send(EventType.NODE_STATUS if logged else EventType.NODE_STATS,
                                 {"ts": time.time(), **stats})
                if logged and sent:
                    self._logged_at, self._workers = now, workers
        except Exception as e:  # noqa: BLE001 - the agent must never die of its telemetry
            if not self._warned:
                logger.warning("torchrt: node stats not sent: %s", e)
                self._warned = True


def _disk() -> Any:
    try:
        return psutil.disk_io_counters()
    except (RuntimeError, OSError):  # no disks visible (some containers)
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
