"""Worker-side entry points: ``torchrt.init()`` and ``torchrt.barrier()``.

``init`` joins the process group with the backend the coordinator chose for the
job (``TORCHRT_BACKEND``, exported by the rendezvous handler): NCCL when every
node has CUDA, Gloo otherwise. Run under plain torchrun (no torchrt handler) it
falls back to NCCL when this process sees CUDA and Gloo otherwise, so one
script works under both backends.

``barrier`` is store-based and costs one round trip to the store: it uses the
store's own ``BARRIER`` operation (libuv and classic TCPStore servers), which
adds one to a counter and answers every waiter the moment the counter reaches
the target. All calls of one name share one key whose counter only grows: call
``n`` waits for ``n * world_size``. A call can never be released by the
previous one (it needs more arrivals than existed then), and nobody can arrive
at ``n + 1`` before ``n`` released everyone, so a long job keeps exactly one key
per barrier name and nothing is ever deleted on the workers' path. (A counter
plus a release key per call, the usual recipe, needs two round trips and a
delete per call: twice as slow here.) Keys live under the round's prefix in the
coordinator's store, or under ``torchrt/restart<N>/`` in plain torchrun's store,
so a restarted generation never meets its predecessor's counters. Ranks must
call barriers of the same name in the same order, as with collectives. A call
that times out leaves its counter short, so the name is then unusable: later
calls fail at once with ``BarrierError`` rather than pair with a stale count.

Rank 0 reports its completions once per barrier name and second. Names go
through the job view's :class:`~torchrt.view.names.NameTable` first, so a
barrier named after the step (``"step-123"``) is reported as ``"step-#"``, one
event a second, not one per call.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from torchrt.contract import Env, EventType, Op, Role, barrier_key, restart_store_prefix, round_store_prefix
from torchrt.coordinator.client import CoordinatorClient
from torchrt.errors import BarrierError
from torchrt.protocol import parse_endpoint
from torchrt.telemetry import NullReporter, coordinator_reporter, get_reporter, set_reporter
from torchrt.telemetry.stacks import StackResponder
from torchrt.view.barriers import CAP as BARRIER_NAMES_CAP
from torchrt.view.names import NameTable

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    """Where this worker stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device
    run_id: str | None
    round: int | None
    node_id: str | None
    endpoint: str | None
    store: str | None  # HOST:PORT of the coordinator's store when started by the torchrt backend


_context: WorkerContext | None = None
_job_store: dist.Store | None = None
_barrier_store: tuple[dist.Store, str] | None = None
_barrier_seq: dict[str, int] = {}
_broken_barriers: set[str] = set()  # names whose call timed out: their counts no longer line up


def init(backend: str | None = None, timeout: timedelta = timedelta(minutes=10)) -> WorkerContext:
    """Initialise the default process group and the worker's telemetry; idempotent."""
    global _context
    if _context is not None:
        return _context
    env = os.environ
    chosen = backend or env.get(Env.BACKEND) or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(env.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if chosen == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=chosen, timeout=timeout)
    round_text = env.get(Env.ROUND)
    _context = WorkerContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")), backend=chosen, device=device,
        run_id=env.get(Env.RUN_ID) or env.get("TORCHELASTIC_RUN_ID"),
        round=int(round_text) if round_text else None, node_id=env.get(Env.NODE_ID),
        endpoint=env.get(Env.ENDPOINT),
        store=env.get(Env.STORE) if round_text else None,  # exported with the round
    )
    _start_telemetry(_context)
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        _watch_agent(os.getppid())
    return _context


def is_initialized() -> bool:
    """Whether ``init`` ran in this process."""
    return _context is not None


def current() -> WorkerContext:
    """The context ``init`` returned; raises if ``init`` was not called."""
    if _context is None:
        raise RuntimeError("torchrt.init() has not been called in this process")
    return _context


def barrier(name: str = "barrier", timeout: timedelta | None = None) -> float:
    """Block until every rank reached barrier ``name``; returns the wait in seconds.

    ``timeout`` defaults to the store's (ten minutes). Raises ``BarrierError`` naming the
    barrier, the call and the world size when not every rank arrives in time.
    """
    ctx = current()
    if name in _broken_barriers:
        raise BarrierError(f"barrier {name!r} timed out earlier in this round; its count is no longer "
                           "consistent across ranks, so it cannot be used again")
    store, prefix = _store_for_barriers(ctx, timeout)
    seq = _barrier_seq.get(name, 0) + 1
    _barrier_seq[name] = seq
    started = time.perf_counter()
    try:
        store.barrier(barrier_key(prefix, name), seq * ctx.world_size, timeout)
    except dist.DistError as e:
        _broken_barriers.add(name)
        raise BarrierError(f"barrier {name!r} (call {seq}): not every one of the {ctx.world_size} ranks "
                           f"arrived: {e}") from e
    elapsed = time.perf_counter() - started
    if ctx.rank == 0:
        key = _barrier_names.key(name)  # bounded: a name that changes every call shares one report
        _barrier_reports.setdefault(key, _BarrierReport(key)).add(ctx.world_size, elapsed)
    return elapsed


class _BarrierReport:
    """Rank 0's barrier completions, reported as one ``barrier`` event per name and second.

    A training loop may pass thousands of barriers a second; an event for each would cost the
    coordinator (and, on a small machine, the workers sharing its CPUs) more than the barriers.
    The first completion of a name is reported at once; later ones as a window: how many, and
    their median, 99th percentile and maximum latency. ``call`` counts the completions of the report's name (of
    every name it stands for, when it is a pattern such as ``step-#``).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.reported_at: float | None = None
        self.last: tuple[int, int] = (0, 0)  # calls so far, world size

    def add(self, world_size: int, elapsed: float) -> None:
        self.latencies.append(elapsed)
        self.last = (self.last[0] + 1, world_size)
        now = time.monotonic()
        if self.reported_at is None or now - self.reported_at >= BARRIER_REPORT_INTERVAL_S:
            self.report(now)

    def report(self, now: float) -> None:
        if not self.latencies:
            return
        ordered = sorted(self.latencies)
        get_reporter().emit(EventType.BARRIER, name=self.name, call=self.last[0], world_size=self.last[1],
                            completions=len(ordered), latency_us=round(ordered[-1] * 1e6, 1),
                            p50_us=round(ordered[len(ordered) // 2] * 1e6, 1),
                            p99_us=round(ordered[max(math.ceil(0.99 * len(ordered)) - 1, 0)] * 1e6, 1),
                            max_us=round(ordered[-1] * 1e6, 1))
        self.latencies.clear()
        self.reported_at = now


BARRIER_REPORT_INTERVAL_S = 1.0
_barrier_reports: dict[str, _BarrierReport] = {}
_barrier_names = NameTable(BARRIER_NAMES_CAP, "barrier names")


def job_store(timeout: timedelta | None = None) -> dist.Store:
    """The store all workers of the job share, itself rather than a prefixed view (a
    ``PrefixStore`` does not forward every operation, e.g. ``barrier``): the coordinator's under
    torchrt (it outlives the round's rank 0), else the one under the default process group's.
    Callers keep their keys apart with prefixes of their own. One client per process."""
    global _job_store
    if _job_store is None:
        ctx = current()
        if ctx.store is not None:
            host, port = parse_endpoint(ctx.store)
            _job_store = dist.TCPStore(host, port, is_master=False, use_libuv=True,
                                       timeout=timeout or timedelta(minutes=10))
        else:  # plain torchrun
            _job_store = underlying_store(dist.distributed_c10d._get_default_store())
    return _job_store


def underlying_store(store: dist.Store) -> dist.Store:
    """The store under any number of ``PrefixStore`` wrappers."""
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    return store


def _store_for_barriers(ctx: WorkerContext, timeout: timedelta | None) -> tuple[dist.Store, str]:
    """The job's store and the key prefix that keeps this round's or this restart generation's
    barriers apart."""
    global _barrier_store
    if _barrier_store is None:
        store = job_store(timeout)
        if ctx.store is None:
            prefix = restart_store_prefix(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        else:
            prefix = round_store_prefix(str(ctx.run_id), int(ctx.round or 0))
        _barrier_store = (store, prefix)
    return _barrier_store


def _watch_agent(agent_pid: int, interval: float = 0.5) -> None:
    """Exit when the torchrun agent that started this worker is gone.

    torchrun gives each worker a session of its own, so a SIGKILLed agent leaves
    its workers running unmanaged, blocked in collectives of a round the job has
    moved past. A worker without its agent is of no use: it goes too.
    """

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            if os.getppid() != agent_pid:
                logger.error("torchrt: the torchrun agent (pid %d) is gone; worker %d exits", agent_pid, os.getpid())
                get_reporter().flush()
                os._exit(1)

    threading.Thread(target=watch, name="torchrt-agent-watch", daemon=True).start()


def _start_telemetry(ctx: WorkerContext) -> None:
    if ctx.endpoint is None or not isinstance(get_reporter(), NullReporter):
        return
    # the coordinator may push a stack-dump request down this connection at any time
    stacks = StackResponder(lambda op, **fields: client.send(op, **fields))
    client = CoordinatorClient(
        ctx.endpoint, role=Role.WORKER, run_id=ctx.run_id, token=os.environ.get(Env.TOKEN),
        hello={"info": {"rank": ctx.rank, "local_rank": ctx.local_rank, "world_size": ctx.world_size,
                        "local_world_size": ctx.local_world_size, "node_id": ctx.node_id,
                        "round": ctx.round, "pid": os.getpid(), "backend": ctx.backend}},
        on_push=stacks.on_push,
    )
    try:
        client.connect(timeout=10)
    except Exception as e:
        logger.warning("torchrt: no telemetry, the coordinator at %s did not accept this worker: %s",
                       ctx.endpoint, e)
        return

    reporter = coordinator_reporter(client)  # batches sent without a reply; the last one at exit a request
    set_reporter(reporter)

    def stop() -> None:
        for pending in _barrier_reports.values():
            pending.report(time.monotonic())
        reporter.close()
        client.close()

    atexit.register(stop)
