"""The coordinator process: one per job, at the rendezvous endpoint.

It owns three things:

* a control server (asyncio, JSON lines, see :mod:`torchrt.protocol`) that every
  agent's rendezvous handler keeps one connection to. Joins, leaves and lost
  connections are handled the moment they arrive and feed :class:`Membership`;
  a changed decision is pushed back to the affected peers at once. Connections
  are accepted and held to their limits (hello deadline, line limits, caps,
  output bound) by :mod:`torchrt.coordinator.admission`;
* a c10d ``TCPStore`` server (libuv) on a second port, bound to the same host,
  used by the agents (rank assignment, exit barrier, one key prefix per round)
  and by ``torchrt.barrier``;
* the run directory (:mod:`torchrt.coordinator.run_dir`): the event log.

What it only watches is :class:`~torchrt.coordinator.observe.Observation`'s: the
job view (built from the run directory and every event), the straggler and stall
rules (a stalled rank's stacks are taken: :meth:`Coordinator.dump_stacks`),
TensorBoard and ``state.json``; the server hands it the workers' and nodes'
reports and knows neither the features' events nor their modules.

All state lives on the event-loop thread; no locks are needed around it (other
threads read the view through :meth:`Coordinator.read_view`). The loop also runs
a short housekeeping tick for what is a timeout by nature (heartbeats, last
call, join timeout, the alert rules, persisting the series).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from torchrt.coordinator.access import FirstRefusals, NodeReportGate, Refused, ReportGate, WorkerIdentity, forbidden, \
    token_matches
from torchrt.coordinator.admission import Admission, AdmissionLimits, Connection, LineTooLongError
from torchrt.coordinator.confirm import Confirmations
from torchrt.coordinator.membership import Membership, NodeStatus, Round, RoundSettings
from torchrt.coordinator.observe import Observation
from torchrt.coordinator.stacks import MAX_TIMEOUT_S, REQUESTED, STACKS_DIR, Dump, StackDumps, next_request_number
from torchrt.coordinator.sockets import listen_socket, store_server
from torchrt.coordinator.run_dir import (
    COORDINATOR_FILE,
    EventLog,
    InvalidRunIdError,
    RunDirError,
    WriteHealth,
    check_run_id,
    write_json_atomic,
    write_text_atomic,
)
from torchrt.contract import (DEFAULT_HOST, DEFAULT_PORT, JOB_DEFAULTS, MEMBERSHIP_OPS, PROTOCOL_VERSION, Code,
                              STACK_DUMP_TIMEOUT_S, Env, EventType, Op, Push, Role, worker_gone_key)
from torchrt.protocol import Message, connect_host, decode, encode, format_endpoint, is_loopback
from torchrt.view.alerts import AlertSettings
from torchrt.view.fold import ViewQueryError
from torchrt.view.job import JobView

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 1.0  # how long shutdown waits for the connections it closed to finish
T = TypeVar("T")


@dataclasses.dataclass
class CoordinatorConfig:
    """How a coordinator is started. ``run_id`` and the job's round settings are
    taken from the first node that says hello unless given here."""

    run_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    run_id: str | None = None
    token: str | None = None
    tick_s: float = 0.05
    state_write_interval_s: float = 0.2
    drain_timeout_s: float = 30.0  # drain(): the longest it waits for the job's processes to go
    confirm_timeout_s: float = 30.0  # a participant that has not confirmed its round by then is declared dead
    admission: AdmissionLimits = dataclasses.field(default_factory=AdmissionLimits)  # before/after hello
    alerts: AlertSettings = dataclasses.field(default_factory=AlertSettings)  # straggler and stall rules


class _Peer:
    __slots__ = ("connection", "writer", "role", "node_id", "join_id", "ready_id", "left", "last_state", "worker",
                 "reports", "refusals")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.writer = connection  # close() and is_closing() as a StreamWriter's, but knowing the hello
        self.role: Role | None = None  # set by a successful hello
        self.node_id: str | None = None
        self.join_id: Any = None
        self.ready_id: Any = None  # a node's confirmation of its round, answered when all confirmed
        self.left = False
        self.last_state: tuple[Any, ...] | None = None
        self.worker: dict[str, Any] | None = None  # a worker's hello info, as recorded
        self.reports: ReportGate | NodeReportGate | None = None  # which of its reports are accepted
        self.refusals = FirstRefusals()  # forbidden ops already recorded for this connection

    def send(self, message: Message) -> None:
        """Queue ``message``; a peer that lets too much pile up unread is dropped (admission)."""
        self.connection.send(encode(message))

    def refuse(self, message: Message) -> None:
        """End the connection with the error ``message``, as admission refuses one
        (:meth:`Connection.refuse`: late before a valid hello, at once after)."""
        self.connection.refuse(encode(message))


class _Rejected(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


class Coordinator:
    """A running coordinator. ``start()`` binds both ports or raises ``OSError``."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.run_id = config.run_id
        run_dir = Path(config.run_dir)
        self.health = WriteHealth(run_dir, on_recovered=self._run_dir_recovered)
        self.events = EventLog(run_dir, health=self.health)  # RunDirError if it cannot be written
        self.membership: Membership | None = None
        self._confirmations = Confirmations(config.confirm_timeout_s)
        self.heartbeat_timeout = JOB_DEFAULTS.heartbeat_timeout
        self._job: dict[str, Any] | None = None
        self._peers: set[_Peer] = set()
        self._subscribers: set[_Peer] = set()
        self._stacks = StackDumps(next_request_number(run_dir / STACKS_DIR))
        self._state_writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="torchrt-state")
        # Start its thread now: started by the first write, in the middle of the first round, its
        # start waited ~0.1 s for the GIL (measured), and so did every node confirming the round.
        self._state_writer.submit(lambda: None)
        try:  # the view replays the run directory and records every event from here on
            self.observed = Observation(run_dir, self.events, self.health, push=self._push_live,
                                        describe=self._describe, writer=self._state_writer,
                                        on_stalled=self._dump_stalled, alerts=config.alerts,
                                        state_interval=config.state_write_interval_s)
        except BaseException:  # e.g. a series snapshot that cannot be read: nothing is left open
            self._state_writer.shutdown()
            self.events.close()
            raise
        self._node_peers: dict[str, _Peer] = {}
        self._broadcast_key: tuple[Any, ...] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._released = False
        self._shutting_down = False
        self._draining: str | None = None  # why, while drain() waits for the job's processes to go
        self._drain_deadline = 0.0
        self._started_at = time.time()
        self.monitor_url: str | None = None  # the job's monitor, once one serves (set_monitor_url)
        self._control_sock: socket.socket | None = None
        self._store: dist.TCPStore | None = None
        self.port = 0
        self.store_port = 0

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Bind both ports and serve; on ``OSError`` (e.g. the endpoint is taken) or
        :class:`RunDirError` nothing is left behind: sockets, threads and the event log are
        released before it propagates.

        On a run directory an earlier coordinator wrote, the record goes on: ``seq`` and round
        numbers continue, a ``coordinator_restarted`` event says so, and the workers that one had
        (their connections died with it) are recorded as stopped. A coordinator still running
        when the interpreter exits is stopped then, cleanly (``atexit``)."""
        host = self.config.host
        try:
            self._control_sock = listen_socket(host, self.config.port)
            self.port = self._control_sock.getsockname()[1]
            store_sock = listen_socket(host, 0)
            self.store_port = store_sock.getsockname()[1]
            self._store = store_server(store_sock, connect_host(host))
            try:
                write_json_atomic(Path(self.config.run_dir) / COORDINATOR_FILE, self._describe())
            except OSError as e:
                raise RunDirError(f"run directory {self.config.run_dir} cannot be written: "
                                  f"{e.strerror or e}") from e
        except BaseException:
            if self._control_sock is not None:
                self._control_sock.close()
            self._release()
            raise
        self.events.emit(EventType.COORDINATOR_STARTED, endpoint=self.endpoint, store_port=self.store_port,
                         pid=os.getpid(), run_id=self.run_id)
        self._record_restart()
        self._warn_if_open()
        self.events.subscribe(self._push_event)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,),
                                        name="torchrt-coordinator", daemon=True)
        self._thread.start()
        ready.wait()
        atexit.register(self._stop_at_exit)
        logger.info("torchrt coordinator listening on %s (store port %d, run dir %s)",
                    self.endpoint, self.store_port, self.config.run_dir)

    def _warn_if_open(self) -> None:
        """A control port other machines can reach with no token lets anyone join, close or read
        the job: say so loudly at start, and in the record."""
        if self.config.token or is_loopback(self.config.host):
            return
        warning = (f"the coordinator listens on {self.endpoint}, reachable from other machines, without "
                   f"a token: anyone who can reach it can join, stop or watch this job; set a token "
                   f"(--token-file, {Env.TOKEN_FILE} or {Env.TOKEN}) or bind 127.0.0.1")
        logger.warning("torchrt: %s", warning)
        self.events.emit(EventType.INSECURE_BIND, host=self.config.host, warning=warning)

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.config.host, self.port)

    def stop(self, reason: str = "stopped") -> None:
        """Record a clean ``shutdown`` (with ``reason``) and stop serving; blocks until done.
        Idempotent, and also what finishes a :meth:`drain` that has ended."""
        with self._stop_lock:
            if self._loop is None or self._released:
                return
            atexit.unregister(self._stop_at_exit)
            try:
                if not self._stopped.is_set():
                    asyncio.run_coroutine_threadsafe(self._shutdown(reason), self._loop).result(timeout=10)
            finally:
                self._stopped.set()
                if self._thread is not None:
                    self._thread.join(timeout=10)
                self._release()

    def drain(self, reason: str, grace_s: float | None = None) -> None:
        """Stop once the job's processes are gone, without recording them as failed.

        The rendezvous is closed now (no new round; joins get ``RendezvousClosedError``), a node
        whose connection ends from now on is recorded as having left (``node_left`` with
        ``reason``) rather than dead, and the coordinator shuts down by itself (``shutdown`` with
        ``reason``) as soon as no node or worker is connected, or after ``grace_s`` (default
        ``config.drain_timeout_s``; 0: now). Thread-safe and returns at once (also from a signal
        handler); :meth:`wait` tells when it is over, :meth:`stop` then releases the rest."""
        loop = self._loop
        if loop is None or self._stopped.is_set():
            return
        grace = self.config.drain_timeout_s if grace_s is None else grace_s
        try:
            loop.call_soon_threadsafe(self._begin_drain, reason, grace)
        except RuntimeError:  # the loop has just stopped
            pass

    def stop_soon(self, reason: str) -> None:
        """Shut down now without blocking (also from a signal handler): the rendezvous stays open,
        so agents reconnect to a coordinator started again on the same endpoint. :meth:`wait`
        tells when it is done, :meth:`stop` then releases the rest."""
        loop = self._loop
        if loop is None or self._stopped.is_set():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(reason), loop)
        except RuntimeError:  # the loop has just stopped
            pass

    def _stop_at_exit(self) -> None:
        self.stop(reason="the process exited without stopping the coordinator")

    def _release(self) -> None:
        """Free what the constructor and ``start`` acquired (not the loop's sockets)."""
        self._released = True
        self._store = None
        self._state_writer.shutdown(wait=True)
        self.observed.close()
        self.events.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the coordinator has shut down; False on timeout."""
        return self._stopped.wait(timeout)

    def _run_loop(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = Admission(self._control_sock, self._serve, self.config.admission)
        self._server.start(self._loop)
        self._tick_task = self._loop.create_task(self._tick_forever())
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self, reason: str) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self.events.emit(EventType.SHUTDOWN, reason=reason)
        self.events.seal()  # the connections it closes now are not news: shutdown is the last event
        self.observed.finish()
        self.events.flush()
        self._tick_task.cancel()
        self._server.close()
        for peer in list(self._peers):
            peer.writer.close()
        # Let the connections' tasks see their end, so none is left pending when the loop closes.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            _, pending = await asyncio.wait(others, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
        self._stopped.set()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    def _begin_drain(self, reason: str, grace_s: float) -> None:
        now = time.monotonic()
        deadline = now + grace_s
        if self._draining is None:
            logger.info("coordinator draining: %s", reason)
            self._draining, self._drain_deadline = reason, deadline
            if self.membership is not None and not self.membership.closed:
                self._close("coordinator", now)
                self._after_change(now)
        else:
            self._drain_deadline = min(self._drain_deadline, deadline)
        self._check_drained(now)

    def _check_drained(self, now: float) -> None:
        if self._draining is None or self._shutting_down:
            return
        if now >= self._drain_deadline or not any(p.role in (Role.NODE, Role.WORKER) for p in self._peers):
            asyncio.get_running_loop().create_task(self._shutdown(self._draining))

    def _record_restart(self) -> None:
        """After ``coordinator_started`` on a run directory an earlier coordinator wrote."""
        previous = self.events.previous
        if previous is None:
            return
        self.events.emit(EventType.COORDINATOR_RESTARTED, previous_pid=previous.pid, last_seq=previous.last_seq,
                         last_round=previous.last_round, clean=previous.clean,
                         workers_gone=[w.get("rank") for w in previous.workers])
        for worker in previous.workers:
            self.events.emit(EventType.WORKER_STOPPED, **worker, reason="coordinator restarted")

    def _run_dir_recovered(self, outage: dict[str, Any]) -> None:
        """``WriteHealth``'s news, from any writer's thread: record it on the loop."""
        loop = self._loop

        def record() -> None:
            self.events.emit(EventType.RUN_DIR_ERROR, **outage, lost_events=self.events.take_dropped())

        if loop is not None and loop.is_running() and threading.current_thread() is not self._thread:
            try:
                loop.call_soon_threadsafe(record)
                return
            except RuntimeError:  # the loop has just stopped
                pass
        record()

    # ------------------------------------------------------------ connections
    async def _serve(self, connection: Connection) -> None:
        """One connection's lines, answered in order, under the limits of :mod:`.admission`."""
        peer = _Peer(connection)
        self._peers.add(peer)
        try:
            while True:
                try:
                    line = await connection.readline()
                    message = decode(line) if line else None
                except LineTooLongError as e:  # the rest of the line is not read: the connection ends
                    peer.refuse({"ok": False, "code": Code.PROTOCOL, "error": str(e)})
                    break
                except ValueError as e:
                    peer.refuse({"ok": False, "code": Code.PROTOCOL, "error": f"not a JSON object: {e}"})
                    break
                if message is None:
                    break
                self._dispatch(peer, message)
                if peer.role is not None:
                    connection.admit()
                if peer.writer.is_closing():
                    break
        except ConnectionError as e:
            logger.debug("connection dropped: %s", e)
        finally:
            self._peers.discard(peer)
            self._subscribers.discard(peer)
            peer.writer.close()
            if peer.role == Role.WORKER and peer.worker is not None:
                self.events.emit(EventType.WORKER_STOPPED,
                                 **{k: peer.worker.get(k) for k in ("rank", "node_id", "pid")}, reason="disconnected")
                self._announce_worker_gone(peer.worker)
            self._finish_dumps(self._stacks.disconnected(peer, time.monotonic()))
            self._disconnected(peer)

    def _announce_worker_gone(self, worker: dict[str, Any]) -> None:
        """Set the worker's ``worker_gone_key`` in the job's store (off the loop), so that ranks
        waiting on it (a checkpoint commit) fail now rather than at their timeout."""
        rank, round_number = worker.get("rank"), worker.get("round")
        if self._store is None or self.run_id is None or not isinstance(rank, int) or not isinstance(round_number, int):
            return
        try:
            self._state_writer.submit(self._store.set, worker_gone_key(self.run_id, round_number, rank),
                                      str(worker.get("pid")))
        except RuntimeError:  # the coordinator is shutting down: nobody is left to tell
            pass

    def _dispatch(self, peer: _Peer, message: Message) -> None:
        """Answer one message: a first hello, then only the ops the connection's role may send
        (:func:`torchrt.coordinator.access.forbidden`)."""
        op, request_id = message.get("op"), message.get("id")
        now = time.monotonic()
        greeting = peer.role is None
        try:
            op = _parse_op(op)
            if greeting:
                if op is not Op.HELLO:
                    raise _Rejected(Code.PROTOCOL, "say hello first")
                reply = self._hello(peer, message, now)
            else:
                why = forbidden(peer.role, op)
                if why is not None:
                    raise _Rejected(Code.FORBIDDEN, why)
                if peer.node_id is not None and self.membership is not None \
                        and self._node_peers.get(peer.node_id) is peer:
                    self.membership.heartbeat(peer.node_id, now)
                reply = getattr(self, f"_op_{op.value}")(peer, message, now)
        except _Rejected as e:
            reply = {"id": request_id, "ok": False, "code": e.code, "error": str(e)}
            if greeting:
                peer.refuse(reply)
            else:
                peer.send(reply)
            if e.code is Code.REJECTED or (e.code is Code.FORBIDDEN and peer.refusals.first(op)):
                self.events.emit(EventType.NODE_REJECTED, op=op, error=str(e))
            return
        if reply is not None and request_id is not None:
            peer.send({"id": request_id, "ok": True, **reply})
        if op in MEMBERSHIP_OPS:
            self._after_change(now)

    def _disconnected(self, peer: _Peer) -> None:
        node_id = peer.node_id
        if node_id is None or self._node_peers.get(node_id) is not peer:
            return
        del self._node_peers[node_id]
        if not peer.left and self.membership is not None:
            if self._draining is not None:  # the job is being stopped: its nodes go, they do not fail
                self.membership.leave(node_id, time.monotonic(), reason=self._draining)
            else:
                self.membership.fail(node_id, "connection lost", time.monotonic())
            self._after_change(time.monotonic())

    # -------------------------------------------------------------------- ops
    def _hello(self, peer: _Peer, message: Message, now: float) -> Message:
        try:
            role = Role(message.get("role"))
        except ValueError:
            raise _Rejected(Code.PROTOCOL, f"unknown role {message.get('role')!r}; expected one of "
                                           f"{', '.join(r.value for r in Role)}") from None
        if message.get("version") != PROTOCOL_VERSION:
            raise _Rejected(Code.PROTOCOL, f"protocol version {message.get('version')} is not "
                                           f"{PROTOCOL_VERSION}; install the same torchrt everywhere")
        info = message.get("info")
        who = f"{role} {message.get('node_id') or (info.get('rank', '') if isinstance(info, dict) else '')}".strip()
        if not token_matches(message.get("token"), self.config.token):
            raise _Rejected(Code.REJECTED, f"{who} presented a token that does not match the token of "
                                           f"the coordinator at {self.endpoint}")
        worker = None
        if role is Role.WORKER:
            try:
                worker = WorkerIdentity.from_hello(info)
            except ValueError as e:
                raise _Rejected(Code.PROTOCOL, str(e)) from None
        run_id = message.get("run_id")
        if role not in (Role.OBSERVER, Role.OPERATOR):
            try:
                check_run_id(run_id, key="run_id")  # it may name a directory (torchrt_runs/RUN_ID)
            except InvalidRunIdError as e:
                raise _Rejected(Code.REJECTED, f"{who}: {e}") from None
            if self.run_id is None:
                self.run_id = str(run_id)
            elif run_id != self.run_id:
                raise _Rejected(Code.REJECTED, f"{who} belongs to run "
                                               f"'{run_id}', but the coordinator at {self.endpoint} "
                                               f"serves run '{self.run_id}'")
        if role is Role.NODE:
            self._hello_node(peer, message, now)
        elif worker is not None:
            peer.reports = ReportGate(worker)
            peer.worker = dict(worker.info)
            self.events.emit(EventType.WORKER_STARTED, **peer.worker)
            self._note_worker_nproc(peer.worker)
            self._stacks.connected(peer, worker.rank, worker.round, peer.worker.get("world_size"))
        peer.role = role
        return {"run_id": self.run_id, "store_port": self.store_port,
                "run_dir": str(Path(self.config.run_dir).resolve()), "coordinator_pid": os.getpid(),
                "closed": self.membership is not None and self.membership.closed}

    def _hello_node(self, peer: _Peer, message: Message, now: float) -> None:
        node_id = str(message.get("node_id") or "")
        if not node_id:
            raise _Rejected(Code.PROTOCOL, "a node must give its node_id")
        job = dict(message.get("job") or {})
        if self.membership is None:
            self._start_job(job)
        else:
            self._check_job(node_id, job)
        assert self.membership is not None
        info = dict(message.get("info") or {})
        if self.membership.backend == "nccl" and info.get("device_kind") != "cuda":
            raise _Rejected(Code.REJECTED, f"node {node_id} has no CUDA device, but this job runs "
                                        f"over nccl")
        old = self._node_peers.get(node_id)
        if old is not None and old is not peer:
            old.node_id = None
            old.writer.close()
        peer.node_id = node_id
        peer.reports = NodeReportGate(node_id)
        self._node_peers[node_id] = peer
        self.membership.connect(node_id, info, now)

    def _start_job(self, job: dict[str, Any]) -> None:
        try:
            settings = RoundSettings(
                min_nodes=int(job["min_nodes"]), max_nodes=int(job["max_nodes"]),
                last_call_timeout=float(job.get("last_call_timeout", JOB_DEFAULTS.last_call_timeout)),
                rejoin_timeout=float(job.get("rejoin_timeout", JOB_DEFAULTS.rejoin_timeout)),
                join_timeout=float(job.get("join_timeout", JOB_DEFAULTS.join_timeout)),
                backend=str(job.get("backend", JOB_DEFAULTS.backend)),
            )
            # the thresholds the job's settings give (--rdzv-conf, YAML) over the coordinator's own
            alerts = dataclasses.replace(self.config.alerts, **dict(job.get("alerts") or {}))
        except (KeyError, TypeError, ValueError) as e:  # a FieldError of the alert settings is a ValueError
            raise _Rejected(Code.PROTOCOL, f"bad job description {job!r}: {e}") from None
        self.heartbeat_timeout = float(job.get("heartbeat_timeout", JOB_DEFAULTS.heartbeat_timeout))
        self._job = job
        self.observed.use_alerts(alerts)
        previous = self.events.previous
        self.membership = Membership(settings, self.events.emit,
                                     previous_round=previous.last_round if previous else 0)
        self.events.emit(EventType.JOB_CONFIGURED, run_id=self.run_id, heartbeat_timeout=self.heartbeat_timeout,
                         **dataclasses.asdict(settings), alerts=dataclasses.asdict(alerts))

    def _check_job(self, node_id: str, job: dict[str, Any]) -> None:
        assert self._job is not None
        mine = (self._job.get("min_nodes"), self._job.get("max_nodes"))
        theirs = (job.get("min_nodes"), job.get("max_nodes"))
        if mine != theirs:
            raise _Rejected(Code.REJECTED, f"node {node_id} asks for nnodes {theirs[0]}:{theirs[1]}, but run "
                                        f"'{self.run_id}' was started with {mine[0]}:{mine[1]}")

    def _node_of(self, peer: _Peer) -> str:
        """The node of a node connection that is still that node's (not replaced by a newer one)."""
        if peer.node_id is None or self._node_peers.get(peer.node_id) is not peer:
            raise _Rejected(Code.FORBIDDEN, "this connection is no longer its node's: a newer one replaced it")
        return peer.node_id

    def _op_join(self, peer: _Peer, message: Message, now: float) -> None:
        node_id = self._node_of(peer)
        assert self.membership is not None
        if self.membership.closed:
            raise _Rejected(Code.CLOSED, f"run '{self.run_id}' is closed; node {node_id} cannot join")
        port = int(message.get("master_port") or 0)
        peer.join_id = message.get("id")
        self.membership.join(node_id, port, now, cause=message.get("cause"))
        return None  # answered when the round completes

    def _op_ready(self, peer: _Peer, message: Message, now: float) -> None:
        """The node confirms the round its join got; answered once every participant did
        (see :mod:`torchrt.coordinator.confirm`), or ``superseded`` when that round will not start."""
        node_id = self._node_of(peer)
        number = message.get("round")
        try:
            if not isinstance(number, int):
                raise LookupError(number)
            peer.ready_id = message.get("id")
            everyone = self._confirmations.confirm(node_id, number)
        except LookupError:
            peer.ready_id = None
            raise _Rejected(Code.SUPERSEDED, f"round {number} is not the round to start any more "
                                             f"(now: {self._confirmations.number or 'a new one is forming'})") from None
        if everyone:
            assert self.membership is not None and self.membership.current is not None
            for participant in self.membership.current.participants:
                self._answer_ready(participant, {"ok": True, "round": number})
        return None

    def _answer_ready(self, node_id: str, message: Message) -> None:
        peer = self._node_peers.get(node_id)
        if peer is not None and peer.ready_id is not None:
            peer.send({"id": peer.ready_id, **message})
            peer.ready_id = None

    def _op_heartbeat(self, peer: _Peer, message: Message, now: float) -> None:
        return None

    def _op_leave(self, peer: _Peer, message: Message, now: float) -> Message:
        node_id = self._node_of(peer)
        assert self.membership is not None
        peer.left = True
        reason = message.get("reason")  # a job being stopped (drain) says why itself
        self.membership.leave(node_id, now, reason=self._draining or (reason[:200] if isinstance(reason, str) else None))
        if message.get("close"):
            self._close(node_id, now)
        return {}

    def _op_close(self, peer: _Peer, message: Message, now: float) -> Message:
        self._close(self._node_of(peer), now)
        return {}

    def _op_status(self, peer: _Peer, message: Message, now: float) -> Message:
        """The view's snapshot, the last ``events`` events, the ``pages`` asked for (lists of the
        view a page at a time: ``[{"part", "kind", "offset", "limit"}]``) and the ``points`` of the
        series asked for (``[{"part", "subject", "measure", "level"}]``, answered in that order)."""
        limit = int(message.get("events", 20))
        try:
            pages = self.observed.pages(message.get("pages"))
            points = self.observed.points(message.get("points"))
        except ViewQueryError as e:
            raise _Rejected(Code.PROTOCOL, str(e)) from None
        return {"state": self.observed.state(), "events": self.events.recent(limit), "pages": pages,
                "points": points}

    def _op_subscribe(self, peer: _Peer, message: Message, now: float) -> Message:
        """Live event stream: the reply carries what is still in memory after ``since``,
        then every new event is pushed as ``{"push": "event", "event": {...}}``."""
        since = int(message.get("since", 0))
        self._subscribers.add(peer)
        return {"events": [e for e in self.events.recent(0) if e["seq"] > since]}

    def _push_event(self, event: dict[str, Any]) -> None:
        self._push_live(Push.EVENT, event)

    def _push_live(self, kind: Push, event: dict[str, Any]) -> None:
        for peer in list(self._subscribers):
            peer.send({"push": kind, "event": event})

    def _dump_stalled(self, rank: int) -> None:
        """The alert rules found ``rank`` stalled: take its stacks (announced by ``stacks_dumped``)."""
        self.dump_stacks(ranks=[rank], reason=EventType.RANK_STALLED)

    def _op_dump_stacks(self, peer: _Peer, message: Message, now: float) -> None:
        """Take the Python stacks of ``rank`` (None: every rank of the current round), waiting at
        most ``timeout_s`` seconds for them; answered when the dump is done and written
        (:mod:`torchrt.coordinator.stacks`)."""
        rank, timeout = message.get("rank"), message.get("timeout_s", STACK_DUMP_TIMEOUT_S)
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
            raise _Rejected(Code.PROTOCOL, f"dump_stacks 'rank': expected an integer >= 0 or null, got {rank!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
            raise _Rejected(Code.PROTOCOL, f"dump_stacks 'timeout_s': expected seconds > 0 and <= "
                                           f"{MAX_TIMEOUT_S:g}, got {timeout!r}")
        self._begin_dump(None if rank is None else [rank], REQUESTED, float(timeout), now,
                         requester=(peer, message.get("id")))
        return None

    def dump_stacks(self, ranks: list[int] | None, reason: str, timeout_s: float = STACK_DUMP_TIMEOUT_S) -> int:
        """Take the Python stacks of ``ranks`` (None: every rank of the current round) for
        ``reason`` (e.g. ``rank_stalled``); returns the dump's number. Call it on the event-loop
        thread; the dump is announced by a ``stacks_dumped`` event when done."""
        return self._begin_dump(ranks, reason, timeout_s, time.monotonic())

    def _begin_dump(self, ranks: list[int] | None, reason: str, timeout_s: float, now: float,
                    requester: tuple[_Peer, Any] | None = None) -> int:
        current = self.membership.current if self.membership is not None else None
        dump = self._stacks.begin(ranks, current.number if current is not None else None, reason, now, time.time(),
                                  timeout_s=timeout_s, requester=requester)
        for peer in dump.waiting.values():
            peer.send({"push": Push.DUMP_STACKS, "request": dump.request})
        if dump.done:
            self._finish_dumps([dump])
        return dump.request

    def _op_stacks(self, peer: _Peer, message: Message, now: float) -> None:
        """A worker's answer to a ``dump_stacks`` push (no reply)."""
        done = self._stacks.answer(peer, message, now)
        if done is not None:
            self._finish_dumps([done])

    def _finish_dumps(self, dumps: list[Dump]) -> None:
        """Write each finished dump to RUN_DIR/stacks/ off the loop; then announce and answer it."""
        for dump in dumps:
            text = json.dumps(dump.record(), separators=(",", ":"), default=str)
            try:
                written = self._state_writer.submit(self._write_dump, dump.path, text)
            except RuntimeError:  # the executor is gone (shutting down): write here
                self._dump_written(dump, self._write_dump(dump.path, text))
                continue
            loop = self._loop
            assert loop is not None
            written.add_done_callback(lambda f, d=dump: _call_soon(loop, self._dump_written, d, f.result()))

    def _write_dump(self, relative: str, text: str) -> str | None:
        """Write one dump (on the state-writer thread); None when the run directory refused it."""
        path = Path(self.config.run_dir) / relative
        try:
            path.parent.mkdir(exist_ok=True)
            write_text_atomic(path, text)
        except OSError as e:
            self.health.failed(STACKS_DIR, e)
            return None
        self.health.succeeded(STACKS_DIR)
        return relative

    def _dump_written(self, dump: Dump, path: str | None) -> None:
        self.events.emit(EventType.STACKS_DUMPED, **{**dump.summary(), "path": path})
        if dump.requester is not None:
            peer, request_id = dump.requester
            if request_id is not None and not peer.writer.is_closing():
                peer.send({"id": request_id, "ok": True, **dump.reply(path)})

    def _op_ping(self, peer: _Peer, message: Message, now: float) -> Message:
        return {"version": PROTOCOL_VERSION, "torch": torch.__version__}

    def _op_telemetry(self, peer: _Peer, message: Message, now: float) -> Message:
        """A worker's or a node's reports: each accepted or refused by its gate (``ReportGate``,
        ``NodeReportGate``); the reply counts both (a refusal is recorded, not an error: see
        torchrt.coordinator.access). A node reports only over the connection that is its node's."""
        if peer.role is Role.NODE:
            self._node_of(peer)
        assert peer.reports is not None
        reports = message.get("events")
        if not isinstance(reports, list):
            raise _Rejected(Code.PROTOCOL, f"telemetry 'events' must be a list, got {type(reports).__name__}")
        current = self.membership.current if self.membership is not None else None
        refused = 0
        for report in reports:
            verdict = peer.reports.admit(report, current)
            if isinstance(verdict, Refused):
                refused += 1
                if verdict.first:
                    self.events.emit(EventType.REPORT_REFUSED, **verdict.record())
            else:
                self.observed.record(verdict)
        return {"accepted": len(reports) - refused, "refused": refused}

    # --------------------------------------------------------------- decisions
    def _close(self, by: str | None, now: float) -> None:
        assert self.membership is not None
        for node_id in self.membership.close(by, now):
            self._answer_join(node_id, {"ok": False, "code": Code.CLOSED,
                                        "error": f"run '{self.run_id}' was closed by {by}"})

    def _after_change(self, now: float) -> None:
        membership = self.membership
        if membership is None:
            return
        completed = membership.poll(now)
        if completed is not None:
            self._announce(completed)
            self._confirmations.open(completed.number, completed.participants, now)
        elif membership.next_round_needed() and self._confirmations.number is not None:
            number = self._confirmations.number
            for node_id in self._confirmations.cancel():
                self._answer_ready(node_id, {"ok": False, "code": Code.SUPERSEDED,
                                             "error": f"round {number} was replaced before it started"})
        self._broadcast_state()

    def _announce(self, completed: Round) -> None:
        for rank, node_id in enumerate(completed.participants):
            self._answer_join(node_id, {
                "ok": True, "rank": rank, "store_port": self.store_port, **completed.to_json()})

    def _answer_join(self, node_id: str, message: Message) -> None:
        peer = self._node_peers.get(node_id)
        if peer is not None and peer.join_id is not None:
            peer.send({"id": peer.join_id, **message})
            peer.join_id = None

    def _broadcast_state(self) -> None:
        membership = self.membership
        assert membership is not None
        current = membership.current.number if membership.current else 0
        dropped = frozenset(n.node_id for n in membership.nodes.values() if n.dropped_from is not None
                            and n.status == NodeStatus.IDLE)
        pending = membership.next_round_needed()
        key = (current, pending, membership.closed, dropped)
        if key == self._broadcast_key:
            return
        self._broadcast_key = key
        for node_id, peer in self._node_peers.items():
            state = (current, membership.restart_hint(node_id), membership.closed)
            if state != peer.last_state:
                peer.last_state = state
                peer.send({"push": Push.STATE, "round": state[0], "waiting": state[1], "closed": state[2]})

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                self._tick(time.monotonic())
            except Exception:
                logger.exception("coordinator tick failed")
                self.events.emit(EventType.ERROR, where="coordinator tick", error="see coordinator log")

    def _tick(self, now: float) -> None:
        membership = self.membership
        if membership is not None:
            late = [(node_id, f"did not confirm round {self._confirmations.number} within "
                              f"{self._confirmations.timeout:g}s") for node_id in self._confirmations.late(now)]
            for node_id, reason in late:
                membership.fail(node_id, reason, now)
            for node_id in [n for n, _ in late] + membership.expire(self.heartbeat_timeout, now):
                peer = self._node_peers.pop(node_id, None)
                if peer is not None:
                    peer.writer.close()
            for node_id in membership.timed_out_joins(now):
                self._answer_join(node_id, {
                    "ok": False, "code": Code.TIMEOUT,
                    "error": f"node {node_id} waited {membership.settings.join_timeout:g}s but only "
                             f"{membership.waiting_count()} of the required {membership.settings.min_nodes} "
                             f"nodes joined: {_waiting_names(membership)}"})
            self._after_change(now)
        self._finish_dumps(self._stacks.expire(now))
        self.events.flush()
        self.observed.tick(now)
        self._check_drained(now)

    # ----------------------------------------------------------------- state
    def snapshot(self) -> dict[str, Any]:
        """What ``state.json`` and the status op carry (the view's snapshot); from any thread."""
        return self.read_view(lambda view: self.observed.state())

    def read_view(self, read: Callable[[JobView], T]) -> T:
        """``read(view)`` on the coordinator's loop, where the view changes (from any thread)."""
        loop = self._loop
        if loop is None or not loop.is_running() or threading.current_thread() is self._thread:
            return read(self.observed.view)
        return asyncio.run_coroutine_threadsafe(_call(read, self.observed.view), loop).result(timeout=10)

    def set_monitor_url(self, url: str) -> None:
        """Record where the job's monitor serves: in ``coordinator.json`` and the state's
        ``"coordinator"`` (the Settings page). From any thread; a failed write is logged."""
        self.monitor_url = url
        try:
            write_json_atomic(Path(self.config.run_dir) / COORDINATOR_FILE, self._describe())
        except OSError as e:
            logger.warning("cannot record the monitor's URL in %s: %s", COORDINATOR_FILE, e.strerror or e)

    def _describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "host": self.config.host, "port": self.port,
                "store_port": self.store_port, "pid": os.getpid(), "run_id": self.run_id,
                "run_dir": str(Path(self.config.run_dir).resolve()), "started_at": self._started_at,
                "token_required": bool(self.config.token), "monitor_url": self.monitor_url}

    def _note_worker_nproc(self, worker: dict[str, Any]) -> None:
        node_id, nproc = worker.get("node_id"), worker.get("local_world_size")
        if self.membership and node_id in self.membership.nodes and nproc:
            self.membership.nodes[node_id].info.setdefault("nproc", nproc)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """``callback(*args)`` on ``loop``, unless the loop has stopped."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: the coordinator is gone
        pass


async def _call(read: Callable[[JobView], T], view: JobView) -> T:
    return read(view)


def _parse_op(value: object) -> Op:
    try:
        return Op(value)
    except ValueError:
        raise _Rejected(Code.PROTOCOL, f"unknown op {value!r}") from None


def _waiting_names(membership: Membership) -> str:
    names = [n.node_id for n in membership.nodes.values() if n.status == NodeStatus.WAITING]
    return ", ".join(names) or "none"
