#!/usr/bin/env python
"""Rendezvous benchmark: torchrt against torchrun's c10d backend (and gloo), in one run.

Usage: ``python benchmarks/rendezvous.py [--quick] [--json PATH] [--only formation,recovery,...]``

Every figure is measured here, side by side with its peer, so that ratios
compare like with like on a noisy machine. Five measurements:

formation_s
    N real agent processes (``fork``), one rendezvous handler each, created
    through torch's registry (``get_rendezvous_handler(RendezvousParameters(...))``)
    exactly as torchrun does. Node 0 hosts (the c10d TCPStore; for torchrt the
    coordinator, in-process), the others have ``is_host=false``. When every
    handler exists, a shared event releases all of them into
    ``next_rendezvous()``; formation = latest return - latest call (wall clock).
    Fresh endpoint and run id per trial, backends and sizes interleaved, median
    over trials. Note: c10d connects to its store when the handler is created
    (before the go), torchrt connects (and node 0 starts its coordinator)
    inside ``next_rendezvous()``, so torchrt's figure includes that.

recovery_s
    A real ``torchrun --nnodes=1:2 --nproc-per-node=1 --max-restarts=3`` job of
    two agents on loopback running ``_recovery_worker.py`` (gloo all_reduce
    loop; every worker start appends ``time rank world_size pid`` to a file).
    Agent A hosts (store / coordinator), agent B has ``is_host=false``. Once
    both workers run at world size 2, node B (its agent's process group *and*
    its workers', which torchrun puts in sessions of their own) is SIGKILLed.
    recovery = first worker start at world size 1 after the kill - kill time;
    null with a reason when it does not happen within the cap.

barrier_us
    ``torchrun --rdzv-backend=torchrt --nnodes=1 --nproc-per-node=W`` running
    ``_barrier_worker.py``: K calls of ``torchrt.barrier`` and K of gloo's
    ``dist.barrier()``, alternating in blocks, each call timed on its own with
    ``perf_counter``; per-rank samples are pooled, p50/p99 reported in µs.

scale_s
    One standalone coordinator (``python -m launch.cli coordinator``) and N
    simulated nodes spread over 16 forked processes of N/16 threads, each a
    ``TorchrtRendezvousHandler`` (via the registry) with ``is_host=false``;
    after a shared go, all call ``next_rendezvous()``. value = last return - go.
    Every node must get a distinct rank 0..N-1 of the same round, else the value
    is null with a reason. ``scale_detail`` adds the coordinator's own record
    (when it completed the round, from its events.jsonl). The full run also
    times c10d at a small N (``scale_s_c10d``), node 0 hosting its store.

attack_formation_s
    Formation of a 4-node job (as ``formation_s``: one forked process per node, latest return -
    latest call) against a standalone coordinator, once calm and once while ``_attack.py`` hits
    its control port with 1,000 idle connections (reopened as soon as the coordinator closes
    them) and 100 junk clients (a line that is not JSON, a 100 KiB line, hellos of a wrong
    version or role; each leaves as soon as it is answered, and starts over), started
    ``ATTACK_WARMUP_S`` (1 s) after every one of them
    connected. Calm and attacked trials alternate; the figure is the
    ratio of their medians (``ratios.attack_slowdown``), ``attack_detail`` has the attacker's
    counts and the size of the coordinator's log.

Subprocesses run in sessions of their own and are killed as whole trees in
``finally`` blocks; fork children are killed if still alive after each trial.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _attack import attack
from _common import free_port, log, machine, write_results
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECOVERY_WORKER = HERE / "_recovery_worker.py"
BARRIER_WORKER = HERE / "_barrier_worker.py"
BACKENDS = ("torchrt", "c10d")
SECTIONS = ("formation", "recovery", "barrier", "scale", "attack")
ATTACK_IDLE, ATTACK_JUNK, ATTACK_NODES = 1000, 100, 4
ATTACK_WARMUP_S = 1.0  # after the attack is going and before the nodes start: its steady state
MP = mp.get_context("fork")  # the parent holds no threads when it forks; children start in ms

Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Profile:
    """How much of everything to run."""

    quick: bool
    formation_trials: int
    recovery_cap_s: float
    barrier_iters: int
    scale_timeout_s: float
    attack_trials: int
    formation_sizes: tuple[int, ...] = (2, 4, 8)
    barrier_sizes: tuple[int, ...] = (2, 4, 8)
    scale_sizes: tuple[int, ...] = (256, 1024)
    scale_procs: int = 16  # 4 processes of 256 threads starve their own heartbeats (GIL) on 2 cores
    c10d_scale_sizes: tuple[int, ...] = ()

    @classmethod
    def make(cls, quick: bool) -> Profile:
        if quick:
            return cls(quick=True, formation_trials=3, recovery_cap_s=90, barrier_iters=300, scale_timeout_s=60,
                       attack_trials=5)
        return cls(quick=False, formation_trials=5, recovery_cap_s=150, barrier_iters=2000,
                   scale_timeout_s=180, attack_trials=9, c10d_scale_sizes=(64,))


# ------------------------------------------------------------------ small helpers
def fresh_endpoint() -> str:
    return f"127.0.0.1:{free_port()}"


def fresh_run_id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for torchrun jobs: ours without TORCHRT_* leftovers, one thread per op."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHRT_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """The first truthy value of ``predicate`` within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(interval)


def median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def percentiles_us(samples: list[float]) -> Json:
    return {"p50": round(float(np.percentile(samples, 50)), 1),
            "p99": round(float(np.percentile(samples, 99)), 1), "n": len(samples)}


def ratio(peer: float | None, ours: float | None) -> float | None:
    """How many times faster torchrt is (peer / torchrt)."""
    if peer is None or ours is None or ours <= 0:
        return None
    return peer / ours


# ------------------------------------------------------------------ subprocesses
def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and the groups of all its descendants.

    torchrun starts every worker in a session of its own, so killing an agent's
    process group alone would leave its workers running as orphans.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    groups = {pid}
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            groups.add(os.getpgid(proc.pid))
    groups.discard(os.getpgrp())  # never ourselves
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


class Spawned:
    """A command in a session of its own with its output in ``log``; ``kill`` takes its tree down."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the tree once; a reaped process is left alone (its pid may belong to someone else now)."""
        if self.proc.returncode is None:
            kill_tree(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._log.close()

    def tail(self, chars: int = 1500) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


def torchrun_argv(backend: str, endpoint: str, run_id: str, *, nnodes: str, nproc: int, script: Path,
                  conf: dict[str, str], max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--rdzv-backend={backend}",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "--local-addr=127.0.0.1",
            "--rdzv-conf", ",".join(f"{k}={v}" for k, v in conf.items()), str(script)]


def host_conf(backend: str, is_host: bool, run_dir: Path) -> dict[str, str]:
    """``--rdzv-conf`` of a node: who hosts, and torchrt's run directory."""
    conf = {"is_host": str(is_host).lower()}
    if backend == "torchrt":
        conf["run_dir"] = str(run_dir)
    return conf


# ------------------------------------------------- simulated nodes (formation, scale)
@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """The rendezvous handlers one forked process runs, one thread each."""

    backend: str
    endpoint: str
    run_id: str
    nnodes: int
    indices: tuple[int, ...]
    host_index: int | None  # the node that hosts the store / coordinator; None: a standalone one
    run_dir: str
    client_log: str | None = None  # where torchrt clients log why a coordinator connection ended


CLIENT_LOGGER = "torchrt.coordinator.client"


@dataclasses.dataclass
class Signals:
    """What the parent and the node processes share."""

    messages: Any = dataclasses.field(default_factory=MP.Queue)  # ("ready"|"result"|"down", record)
    go: Any = dataclasses.field(default_factory=MP.Event)
    release: Any = dataclasses.field(default_factory=MP.Event)  # guests shut down
    release_host: Any = dataclasses.field(default_factory=MP.Event)  # then the host


def make_handler(group: NodeGroup, index: int) -> RendezvousHandler:
    conf = host_conf(group.backend, index == group.host_index, Path(group.run_dir))
    if group.backend == "torchrt":  # many simulated nodes share one machine: none samples it
        conf["node_stats_interval"] = "0"
    params = RendezvousParameters(group.backend, group.endpoint, group.run_id, group.nnodes, group.nnodes,
                                  local_addr="127.0.0.1", **conf)
    return get_rendezvous_handler(params)


def round_of(handler: RendezvousHandler) -> int | None:
    """The round number the handler just joined (torchrt: public; c10d: its state holder)."""
    joined = getattr(handler, "round", None)
    if isinstance(joined, dict):
        return int(joined["round"])
    state = getattr(getattr(handler, "_state_holder", None), "state", None)
    return getattr(state, "round", None)


def _run_node(group: NodeGroup, index: int, signals: Signals, handlers: dict[int, RendezvousHandler],
              timeout: float) -> None:
    record: Json = {"index": index}
    try:
        handler = handlers[index] = make_handler(group, index)
    except Exception as e:
        signals.messages.put(("ready", {**record, "error": f"create: {e!r}"}))
        signals.messages.put(("result", {**record, "error": f"create: {e!r}"}))
        return
    signals.messages.put(("ready", record))
    if not signals.go.wait(timeout):
        signals.messages.put(("result", {**record, "error": "no go"}))
        return
    try:
        record["call"] = time.time()
        info = handler.next_rendezvous()
        record["ret"] = time.time()
        record.update(rank=info.rank, world_size=info.world_size, round=round_of(handler))
    except Exception as e:
        record["error"] = f"next_rendezvous: {e!r}"
    signals.messages.put(("result", record))


def _shut_down(handlers: dict[int, RendezvousHandler], signals: Signals) -> None:
    threads = [threading.Thread(target=h.shutdown, daemon=True) for h in handlers.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for index in handlers:
        signals.messages.put(("down", {"index": index}))


def _log_client_debug(path: str | None) -> logging.Handler | None:
    if path is None:
        return None
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger(CLIENT_LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return handler


def node_process(group: NodeGroup, signals: Signals, timeout: float) -> None:
    """Body of one forked node process: its nodes rendezvous in threads, then shut down in order."""
    handlers: dict[int, RendezvousHandler] = {}
    log_handler = _log_client_debug(group.client_log)
    threads = [threading.Thread(target=_run_node, args=(group, i, signals, handlers, timeout), daemon=True)
               for i in group.indices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if log_handler is not None:  # connections closed by our own shutdown are not news
        logging.getLogger(CLIENT_LOGGER).removeHandler(log_handler)
    if not signals.release.wait(timeout):
        return
    host = {i: h for i, h in handlers.items() if i == group.host_index}
    _shut_down({i: h for i, h in handlers.items() if i not in host}, signals)
    if host and signals.release_host.wait(timeout):
        _shut_down(host, signals)


@dataclasses.dataclass
class NodesRun:
    """What the simulated nodes reported: the go time, one record per node, why some are missing."""

    go: float | None
    records: list[Json]
    problem: str | None = None


def _collect(signals: Signals, kind: str, count: int, deadline: float, into: list[Json]) -> str | None:
    """Gather ``count`` messages of ``kind`` into ``into``; a description of the shortfall on timeout."""
    while len(into) < count:
        try:
            got, record = signals.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return f"only {len(into)} of {count} nodes reported {kind!r} in time"
        if got == kind:
            into.append(record)
    return None


def run_nodes(groups: list[NodeGroup], timeout: float) -> NodesRun:
    """Fork one process per group, release every node at once when all are ready, gather their records."""
    signals = Signals()
    total = sum(len(g.indices) for g in groups)
    guests = total - sum(1 for g in groups if g.host_index in g.indices)
    procs = [MP.Process(target=node_process, args=(g, signals, timeout), daemon=True) for g in groups]
    sys.stdout.flush()
    sys.stderr.flush()
    deadline = time.monotonic() + timeout
    run = NodesRun(go=None, records=[])
    try:
        for proc in procs:
            proc.start()
        run.problem = _collect(signals, "ready", total, deadline, [])
        if run.problem:
            return run
        run.go = time.time()
        signals.go.set()
        run.problem = _collect(signals, "result", total, deadline, run.records)
        if run.problem:  # some nodes are stuck in next_rendezvous: nothing to shut down in order
            return run
        signals.release.set()
        _collect(signals, "down", guests, time.monotonic() + 30, [])
        signals.release_host.set()
        for proc in procs:
            proc.join(max(1.0, deadline - time.monotonic()))
    finally:
        signals.go.set()
        signals.release.set()
        signals.release_host.set()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
    return run


def round_problem(run: NodesRun, nnodes: int) -> str | None:
    """Why ``run`` is not one round of ``nnodes`` with distinct ranks 0..nnodes-1; None when it is."""
    errors = [r["error"] for r in run.records if "error" in r]
    if run.problem or errors:
        failed = f"{len(errors)} node(s) failed, e.g. {errors[0]}" if errors else None
        return "; ".join(p for p in (run.problem, failed) if p)
    ranks = sorted(r["rank"] for r in run.records)
    if ranks != list(range(nnodes)):
        return f"ranks are not 0..{nnodes - 1}: {ranks[:10]}..."
    if {r["world_size"] for r in run.records} != {nnodes}:
        return f"world sizes differ: {sorted({r['world_size'] for r in run.records})}"
    rounds = {r["round"] for r in run.records}
    if len(rounds) != 1:
        return f"nodes ended in different rounds: {sorted(map(str, rounds))}"
    return None


def split(indices: range, parts: int) -> list[tuple[int, ...]]:
    return [tuple(indices[p::parts]) for p in range(parts) if indices[p::parts]]


# ------------------------------------------------------------------ formation
def formation_trial(backend: str, nnodes: int, tmp: Path) -> float:
    """Seconds from the last node's call to the last node's return (raises RuntimeError on a bad round)."""
    run_id = fresh_run_id(f"form-{backend}-{nnodes}")
    endpoint = fresh_endpoint()
    groups = [NodeGroup(backend, endpoint, run_id, nnodes, (i,), 0, str(tmp / run_id)) for i in range(nnodes)]
    run = run_nodes(groups, timeout=120)
    problem = round_problem(run, nnodes)
    if problem:
        raise RuntimeError(problem)
    return max(r["ret"] for r in run.records) - max(r["call"] for r in run.records)


def measure_formation(profile: Profile, tmp: Path) -> Json:
    samples: dict[str, dict[str, list[float]]] = {b: {str(n): [] for n in profile.formation_sizes}
                                                   for b in BACKENDS}
    failures: list[str] = []
    for trial in range(1, profile.formation_trials + 1):
        for nnodes in profile.formation_sizes:
            for backend in BACKENDS:  # interleaved, so both backends see the same noise
                try:
                    seconds = formation_trial(backend, nnodes, tmp)
                except RuntimeError as e:
                    failures.append(f"trial {trial} {backend} N={nnodes}: {e}")
                    log(f"formation trial {trial} {backend:7} N={nnodes}: FAILED {e}")
                    continue
                samples[backend][str(nnodes)].append(seconds)
                log(f"formation trial {trial} {backend:7} N={nnodes}: {seconds:.3f} s")
    out: Json = {"formation_s": {b: {n: median(v) for n, v in per.items()} for b, per in samples.items()},
                 "formation_trials_s": samples}
    if failures:
        out["formation_failures"] = failures
    return out


# ------------------------------------------------------------------ recovery
def read_starts(path: Path) -> list[tuple[float, int, int, int]]:
    """The (time, rank, world_size, pid) lines the recovery workers wrote."""
    if not path.exists():
        return []
    starts = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            starts.append((float(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])))
    return starts


def running_at_two(path: Path) -> bool:
    """Both ranks of the latest generation started at world size 2."""
    starts = read_starts(path)
    if not starts or starts[-1][2] != 2:
        return False
    latest: dict[int, int] = {}
    for _, rank, world, _ in starts:
        latest[rank] = world
    return latest.get(0) == 2 and latest.get(1) == 2


def recovery_trial(backend: str, cap_s: float, tmp: Path) -> tuple[float | None, str | None]:
    """Seconds from SIGKILL of node B to the survivor's worker starting at world size 1."""
    work = tmp / fresh_run_id(f"recovery-{backend}")
    work.mkdir()
    starts_file = work / "starts.txt"
    endpoint, run_id = fresh_endpoint(), work.name
    env = bench_env(BENCH_START_FILE=str(starts_file), BENCH_RUN_S="900")

    def agent(name: str, is_host: bool) -> Spawned:
        argv = torchrun_argv(backend, endpoint, run_id, nnodes="1:2", nproc=1, script=RECOVERY_WORKER,
                             conf=host_conf(backend, is_host, work / "run"), max_restarts=3)
        return Spawned(argv, work / f"agent-{name}.log", env)

    with contextlib.ExitStack() as stack:
        a = stack.enter_context(agent("A", True))
        time.sleep(0.5)
        b = stack.enter_context(agent("B", False))
        if not wait_for(lambda: running_at_two(starts_file), 120):
            return None, f"the job never ran at world size 2 within 120 s; A: {a.tail(400)!r}"
        time.sleep(2.0)  # let both workers settle into their all_reduce loop
        if not running_at_two(starts_file):
            return None, "the job restarted on its own before the kill"
        killed_at = time.time()
        b.kill()
        survivor = wait_for(lambda: [s for s in read_starts(starts_file) if s[0] > killed_at and s[2] == 1],
                            cap_s, interval=0.05)
        if survivor:
            return survivor[0][0] - killed_at, None
        alive = "alive" if a.proc.poll() is None else f"exited {a.proc.returncode}"
        return None, (f"no worker restarted at world size 1 within {cap_s:g} s of the SIGKILL "
                      f"(agent A {alive}); last lines of A: {a.tail(400)!r}")


def measure_recovery(profile: Profile, tmp: Path) -> Json:
    values: Json = {}
    reasons: Json = {}
    for backend in BACKENDS:
        seconds, reason = recovery_trial(backend, profile.recovery_cap_s, tmp)
        values[backend] = seconds
        if reason:
            reasons[backend] = reason
        log(f"recovery {backend:7}: " + (f"{seconds:.2f} s" if seconds is not None else f"none ({reason})"))
    out: Json = {"recovery_s": values}
    if reasons:
        out["recovery_reason"] = reasons
    return out


# ------------------------------------------------------------------ barrier
def barrier_job(world: int, iters: int, tmp: Path) -> dict[str, list[float]]:
    """Pooled per-call samples (µs) of every rank, by kind ("torchrt", "gloo")."""
    work = tmp / fresh_run_id(f"barrier-{world}")
    out = work / "out"
    out.mkdir(parents=True)
    argv = torchrun_argv("torchrt", fresh_endpoint(), work.name, nnodes="1", nproc=world,
                         script=BARRIER_WORKER, conf={"run_dir": str(work / "run")})
    with Spawned(argv, work / "agent.log", bench_env(BENCH_OUT_DIR=str(out), BENCH_ITERS=str(iters))) as job:
        rc = job.wait(300)
        if rc != 0:
            raise RuntimeError(f"barrier job W={world} ended with {rc}; log: {job.tail()}")
    pooled: dict[str, list[float]] = {}
    for path in sorted(out.glob("rank*.json")):
        for kind, samples in json.loads(path.read_text())["samples_us"].items():
            pooled.setdefault(kind, []).extend(samples)
    return pooled


def measure_barrier(profile: Profile, tmp: Path) -> Json:
    result: dict[str, Json] = {"torchrt": {}, "gloo": {}}
    reasons: Json = {}
    for world in profile.barrier_sizes:
        try:
            pooled = barrier_job(world, profile.barrier_iters, tmp)
        except RuntimeError as e:
            reasons[str(world)] = str(e)
            log(f"barrier W={world}: FAILED {e}")
            continue
        for kind, samples in pooled.items():
            result[kind][str(world)] = percentiles_us(samples)
        log(f"barrier W={world}: torchrt {result['torchrt'][str(world)]}, gloo {result['gloo'][str(world)]}")
    out: Json = {"barrier_us": result}
    if reasons:
        out["barrier_reason"] = reasons
    return out


# ------------------------------------------------------------------ scale
@contextlib.contextmanager
def standalone_coordinator(endpoint: str, run_dir: Path, log_path: Path) -> Iterator[Spawned]:
    argv = [sys.executable, "-m", "launch.cli", "coordinator", "--bind", endpoint, "--run-dir", str(run_dir)]
    with Spawned(argv, log_path, bench_env()) as coordinator:
        if not wait_for(lambda: "listening" in coordinator.tail() or coordinator.proc.poll() is not None, 60):
            raise RuntimeError(f"the coordinator did not start: {coordinator.tail()}")
        if coordinator.proc.poll() is not None:
            raise RuntimeError(f"the coordinator exited: {coordinator.tail()}")
        yield coordinator


def coordinator_events(run_dir: Path) -> list[Json]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


def connection_ends(client_log: Path) -> Json:
    """Why torchrt clients lost their coordinator connection during the rendezvous, with counts."""
    if not client_log.exists():
        return {}
    reasons = [line.split(" ended: ", 1)[1].strip() for line in client_log.read_text().splitlines()
               if " ended: " in line]
    return dict(collections.Counter(reasons))


def scale_detail(run: NodesRun, run_dir: Path, client_log: Path) -> Json:
    """Where the time went: the coordinator's own record of the round, and the nodes' returns."""
    events = coordinator_events(run_dir)
    detail: Json = {"event_counts": dict(collections.Counter(e["type"] for e in events))}
    completed = [e["ts"] for e in events if e["type"] == "round_completed"]
    if run.go is not None and completed:
        detail["round_completed_at_coordinator_s"] = round(completed[0] - run.go, 3)
    dead = [e.get("reason") for e in events if e["type"] == "node_dead"]
    if dead:
        detail["node_dead_reasons"] = dict(collections.Counter(map(str, dead)))
    ends = connection_ends(client_log)
    if ends:
        detail["client_connection_ends"] = ends
    returned = sorted(r["ret"] - run.go for r in run.records if "ret" in r and run.go is not None)
    if returned:
        detail["first_return_s"] = round(returned[0], 3)
        detail["median_return_s"] = round(returned[len(returned) // 2], 3)
    return detail


def scale_trial(backend: str, nnodes: int, procs: int, timeout: float, tmp: Path) -> tuple[float | None, Json]:
    """Seconds from the go until the last of ``nnodes`` simulated nodes got its round, and details."""
    run_id = fresh_run_id(f"scale-{backend}-{nnodes}")
    endpoint = fresh_endpoint()
    work = tmp / run_id
    work.mkdir()
    host_index = 0 if backend == "c10d" else None
    groups = [NodeGroup(backend, endpoint, run_id, nnodes, part, host_index, str(work / "run"),
                        client_log=str(work / "clients.log"))
              for part in split(range(nnodes), procs)]
    with contextlib.ExitStack() as stack:
        if backend == "torchrt":
            stack.enter_context(standalone_coordinator(endpoint, work / "run", work / "coordinator.log"))
        run = run_nodes(groups, timeout)
    detail = scale_detail(run, work / "run", work / "clients.log")
    problem = round_problem(run, nnodes)
    if problem:
        detail["reason"] = problem
        coordinator_log = work / "coordinator.log"
        if coordinator_log.exists():
            detail["coordinator_log_tail"] = coordinator_log.read_text(errors="replace")[-2000:]
        return None, detail
    assert run.go is not None
    return max(r["ret"] for r in run.records) - run.go, detail


def measure_scale(profile: Profile, tmp: Path) -> Json:
    out: Json = {"scale_s": {}, "scale_detail": {}}
    plan = [("torchrt", n) for n in profile.scale_sizes] + [("c10d", n) for n in profile.c10d_scale_sizes]
    for backend, nnodes in plan:
        key = "scale_s" if backend == "torchrt" else "scale_s_c10d"
        seconds, detail = scale_trial(backend, nnodes, profile.scale_procs, profile.scale_timeout_s, tmp)
        out.setdefault(key, {})[str(nnodes)] = seconds
        out["scale_detail"][f"{backend}-{nnodes}"] = detail
        log(f"scale {backend:7} N={nnodes}: " + (f"{seconds:.2f} s" if seconds is not None else "failed")
            + f" {detail}")
    return out


# ------------------------------------------------------------------ formation under attack
@contextlib.contextmanager
def attacking(endpoint: str) -> Iterator[Json]:
    """``_attack.attack`` in a forked process while the block runs; the yielded dict gets its counts."""
    ready, stop, out = MP.Event(), MP.Event(), MP.Queue()
    proc = MP.Process(target=attack, args=(endpoint, ATTACK_IDLE, ATTACK_JUNK, ready, stop, out), daemon=True)
    proc.start()
    counts: Json = {}
    try:
        if not ready.wait(60):
            raise RuntimeError("the attack did not get going within 60 s")
        time.sleep(ATTACK_WARMUP_S)
        yield counts
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            counts.update(out.get(timeout=30))
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def attack_trial(attacked: bool, tmp: Path) -> tuple[float, Json]:
    """Formation seconds of ``ATTACK_NODES`` nodes against a standalone coordinator, under attack or
    calm, and what the attacker did (raises RuntimeError on a bad round)."""
    run_id = fresh_run_id("attacked" if attacked else "calm")
    endpoint, work = fresh_endpoint(), tmp / run_id
    work.mkdir()
    groups = [NodeGroup("torchrt", endpoint, run_id, ATTACK_NODES, (i,), None, str(work / "run"))
              for i in range(ATTACK_NODES)]
    counts: Json = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(standalone_coordinator(endpoint, work / "run", work / "coordinator.log"))
        if attacked:
            counts = stack.enter_context(attacking(endpoint))
        run = run_nodes(groups, timeout=120)
    detail = {**counts, "coordinator_log_bytes": (work / "coordinator.log").stat().st_size}
    problem = round_problem(run, ATTACK_NODES)
    if problem:
        raise RuntimeError(f"{problem}; {detail}")
    return max(r["ret"] for r in run.records) - max(r["call"] for r in run.records), detail


def measure_attack(profile: Profile, tmp: Path) -> Json:
    samples: dict[str, list[float]] = {"calm": [], "attacked": []}
    details: list[Json] = []
    failures: list[str] = []
    for trial in range(1, profile.attack_trials + 1):
        for attacked in (False, True):  # alternating, so both see the same noise
            kind = "attacked" if attacked else "calm"
            try:
                seconds, detail = attack_trial(attacked, tmp)
            except RuntimeError as e:
                failures.append(f"trial {trial} {kind}: {e}")
                log(f"attack trial {trial} {kind:8}: FAILED {e}")
                continue
            samples[kind].append(seconds)
            if attacked:
                details.append(detail)
            log(f"attack trial {trial} {kind:8}: {seconds:.3f} s {detail if attacked else ''}")
    out: Json = {"attack_formation_s": {k: median(v) for k, v in samples.items()},
                 "attack_formation_trials_s": samples, "attack_detail": details}
    if failures:
        out["attack_failures"] = failures
    return out


# ------------------------------------------------------------------ report
def ratios(results: Json) -> Json:
    """How many times faster torchrt is than its peer (peer / torchrt), per measure."""
    out: Json = {}
    form = results.get("formation_s")
    if form:
        out["formation"] = {n: ratio(form["c10d"][n], ours) for n, ours in form["torchrt"].items()}
    rec = results.get("recovery_s")
    if rec:
        capped = rec.get("c10d") is None and rec.get("torchrt") is not None
        peer = results["meta"]["recovery_cap_s"] if capped else rec.get("c10d")
        out["recovery"] = ratio(peer, rec.get("torchrt"))
        out["recovery_is_lower_bound"] = capped  # c10d did not recover within the cap
    bar = results.get("barrier_us")
    if bar:
        out["barrier_p50"] = {w: ratio(bar["gloo"][w]["p50"], v["p50"]) for w, v in bar["torchrt"].items()}
        out["barrier_p99"] = {w: ratio(bar["gloo"][w]["p99"], v["p99"]) for w, v in bar["torchrt"].items()}
    attacked = results.get("attack_formation_s")
    if attacked:
        out["attack_slowdown"] = ratio(attacked["attacked"], attacked["calm"])  # attacked / calm
    return out


def goals(results: Json) -> Json:
    """The targets, each True/False, or None when not measured."""
    x = results["ratios"]
    out: Json = {}

    def at_least(values: list[float | None], target: float) -> bool:
        return bool(values) and all(v is not None and v >= target for v in values)

    if "formation" in x:
        out["formation_5x_faster_than_c10d"] = at_least(list(x["formation"].values()), 5)
    if "recovery" in x:
        out["recovery_3x_faster_than_c10d"] = at_least([x["recovery"]], 3)
    if "barrier_p50" in x:
        w8 = results["barrier_us"]["torchrt"].get("8")
        out["barrier_p50_w8_le_1000us"] = None if w8 is None else w8["p50"] <= 1000
        out["barrier_2x_faster_than_gloo"] = at_least(list(x["barrier_p50"].values()), 2)
    if "scale_s" in results:
        scale = results["scale_s"].get("1024")
        out["scale_1024_le_5s"] = scale is not None and scale <= 5  # every simulated node returned
        formed = results.get("scale_detail", {}).get("torchrt-1024", {}).get("round_completed_at_coordinator_s")
        out["scale_1024_round_completed_le_5s"] = formed is not None and formed <= 5
    if "attack_slowdown" in x:
        out["attack_formation_le_1_5x_calm"] = x["attack_slowdown"] is not None and x["attack_slowdown"] <= 1.5
    return out


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} {unit}" if unit == "µs" else f"{value:.3f} {unit}"


def table(results: Json) -> str:
    rows: list[tuple[str, str, str, str]] = [("measure", "torchrt", "peer", "peer / torchrt")]

    def add(name: str, ours: float | None, peer: float | None, unit: str) -> None:
        x = ratio(peer, ours)
        rows.append((name, fmt(ours, unit), fmt(peer, unit), f"{x:.1f}x" if x is not None else "—"))

    for n, ours in results.get("formation_s", {}).get("torchrt", {}).items():
        add(f"formation N={n} (c10d)", ours, results["formation_s"]["c10d"][n], "s")
    if "recovery_s" in results:
        capped = results["ratios"]["recovery_is_lower_bound"]
        add(f"recovery after SIGKILL (c10d{', missed the cap' if capped else ''})",
            results["recovery_s"]["torchrt"], results["recovery_s"]["c10d"], "s")
    for w, ours in results.get("barrier_us", {}).get("torchrt", {}).items():
        for q in ("p50", "p99"):
            add(f"barrier W={w} {q} (gloo)", ours[q], results["barrier_us"]["gloo"][w][q], "µs")
    for n, ours in results.get("scale_s", {}).items():
        add(f"scale N={n} (c10d: n/a)", ours, None, "s")
        formed = results.get("scale_detail", {}).get(f"torchrt-{n}", {}).get("round_completed_at_coordinator_s")
        add("  round complete at coordinator", formed, None, "s")
    for n, peer in results.get("scale_s_c10d", {}).items():
        add(f"scale N={n} (c10d)", None, peer, "s")
    if "attack_formation_s" in results:
        add(f"formation N={ATTACK_NODES}, {ATTACK_IDLE:,} idle + {ATTACK_JUNK} junk (calm)",
            results["attack_formation_s"]["attacked"], results["attack_formation_s"]["calm"], "s")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdicts = [f"  {name}: {'met' if ok else ('not measured' if ok is None else 'MISSED')}"
                for name, ok in results["meta"]["goals"].items()]
    return "\n".join(lines + ["", "goals:"] + verdicts)


def meta(profile: Profile, args: argparse.Namespace) -> Json:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        **machine(), "quick": profile.quick,
        "formation_trials": profile.formation_trials, "attack_trials": profile.attack_trials, "recovery_trials": 1,
        "recovery_cap_s": profile.recovery_cap_s, "barrier_iters_per_rank": profile.barrier_iters,
        "scale_procs": profile.scale_procs, "sections": args.only,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


MEASUREMENTS: dict[str, Callable[[Profile, Path], Json]] = {
    "formation": measure_formation, "recovery": measure_recovery,
    "barrier": measure_barrier, "scale": measure_scale, "attack": measure_attack,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and iterations (< 5 min)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}")
    profile = Profile.make(args.quick)
    results: Json = {"meta": meta(profile, args)}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="torchrt-bench-") as tmp:
        for name in sections:
            results.update(MEASUREMENTS[name](profile, Path(tmp)))
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    results["ratios"] = ratios(results)
    results["meta"]["goals"] = goals(results)
    print(table(results), flush=True)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
