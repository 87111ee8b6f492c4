"""The coordinator process: one per job, at the rendezvous endpoint.

It owns three things:

* a control server (asyncio, JSON lines, see :mod:`torchrt.protocol`) that every
  agent's rendezvous handler keeps one connection to. Joins, leaves and lost
  connections are handled the moment they arrive and feed :class:`Membership`;
  a changed decision is pushed back to the affected peers at once;
* a c10d ``TCPStore`` server (libuv) on a second port, bound to the same host,
  used by the agents (rank assignment, exit barrier, one key prefix per round)
  and by ``torchrt.barrier``;
* the run directory (:mod:`torchrt.coordinator.run_dir`): events and snapshots.

All state lives on the event-loop thread; no locks are needed around it. The
loop also runs a short housekeeping tick for what is a timeout by nature
(heartbeats, last call, join timeout).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from torchrt.coordinator.membership import Membership, NodeStatus, Round, RoundSettings
from torchrt.coordinator.records import CheckpointRecords, MetricsWriter
from torchrt.coordinator.run_dir import (
    COORDINATOR_FILE,
    STATE_FILE,
    EventLog,
    write_json_atomic,
    write_text_atomic,
)
from torchrt.data.events import DATA_PREVIEW, RegistryFold
from torchrt.contract import PROTOCOL_VERSION, worker_gone_key
from torchrt.protocol import MAX_LINE_BYTES, Message, decode, encode
from torchrt.telemetry import METRIC

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TIMEOUT = 2.5
LISTEN_BACKLOG = 4096  # a thousand nodes may dial at once
_ROLES = ("node", "worker", "observer")
_MEMBERSHIP_OPS = ("hello", "join", "leave", "close")
# Frequent and only interesting live (sample thumbnails, user metrics): folded into state or
# TensorBoard and pushed to subscribers (as the push kind given here), not appended to events.jsonl.
EPHEMERAL_EVENTS = {DATA_PREVIEW: "preview", METRIC: "metric"}


@dataclasses.dataclass
class CoordinatorConfig:
    """How a coordinator is started. ``run_id`` and the job's round settings are
    taken from the first node that says hello unless given here."""

    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 29400
    run_id: str | None = None
    token: str | None = None
    tick_s: float = 0.05
    state_write_interval_s: float = 0.2


class _Peer:
    __slots__ = ("writer", "role", "node_id", "join_id", "left", "last_state", "worker")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.role: str | None = None
        self.node_id: str | None = None
        self.join_id: Any = None
        self.left = False
        self.last_state: tuple[Any, ...] | None = None
        self.worker: dict[str, Any] | None = None

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))


class _Rejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Coordinator:
    """A running coordinator. ``start()`` binds both ports or raises ``OSError``."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.run_id = config.run_id
        self.events = EventLog(Path(config.run_dir))
        self.membership: Membership | None = None
        self.heartbeat_timeout = DEFAULT_HEARTBEAT_TIMEOUT
        self._job: dict[str, Any] | None = None
        self._peers: set[_Peer] = set()
        self._subscribers: set[_Peer] = set()
        self._datasets = RegistryFold()
        self._checkpoints = CheckpointRecords()
        self._metrics = MetricsWriter(Path(config.run_dir))
        self._state_writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="torchrt-state")
        self._state_write: concurrent.futures.Future[None] | None = None
        self._node_peers: dict[str, _Peer] = {}
        self._broadcast_key: tuple[Any, ...] | None = None
        self._state_dirty = True
        self._state_written_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._started_at = time.time()
        self._control_sock: socket.socket | None = None
        self._store: dist.TCPStore | None = None
        self.port = 0
        self.store_port = 0

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Bind both ports and serve; on ``OSError`` (e.g. the endpoint is taken) nothing is
        left behind: sockets, threads and the event log are released before it propagates."""
        host = self.config.host
        try:
            self._control_sock = _listen(host, self.config.port)
            self.port = self._control_sock.getsockname()[1]
            store_sock = _listen(host, 0)
        except OSError:
            if self._control_sock is not None:
                self._control_sock.close()
            self._release()
            raise
        self.store_port = store_sock.getsockname()[1]
        self._store = dist.TCPStore(  # takes ownership of the listening socket
            _connect_host(host), self.store_port, is_master=True, wait_for_workers=False,
            use_libuv=True, master_listen_fd=store_sock.detach(),
        )
        write_json_atomic(Path(self.config.run_dir) / COORDINATOR_FILE, self._describe())
        self.events.emit("coordinator_started", endpoint=self.endpoint, store_port=self.store_port,
                         pid=os.getpid(), run_id=self.run_id)
        self.events.subscribe(self._push_event)
        self.events.subscribe(self._metrics.observe)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,),
                                        name="torchrt-coordinator", daemon=True)
        self._thread.start()
        ready.wait()
        logger.info("torchrt coordinator listening on %s (store port %d, run dir %s)",
                    self.endpoint, self.store_port, self.config.run_dir)

    @property
    def endpoint(self) -> str:
        return f"{self.config.host}:{self.port}"

    def stop(self) -> None:
        if self._loop is None or self._stopped.is_set():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        finally:
            self._stopped.set()
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._release()

    def _release(self) -> None:
        """Free what the constructor and ``start`` acquired (not the loop's sockets)."""
        self._store = None
        self._state_writer.shutdown(wait=True)
        self._metrics.close()
        self.events.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the coordinator has stopped; False on timeout."""
        return self._stopped.wait(timeout)

    def _run_loop(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=self._control_sock, limit=MAX_LINE_BYTES,
                                 backlog=LISTEN_BACKLOG))  # asyncio re-listens with 100 otherwise
        self._tick_task = self._loop.create_task(self._tick_forever())
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        self.events.emit("shutdown", reason="coordinator stopped")
        self._write_state(force=True)
        self._tick_task.cancel()
        self._server.close()
        for peer in list(self._peers):
            peer.writer.close()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    # ------------------------------------------------------------ connections
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _Peer(writer)
        self._peers.add(peer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    message = decode(line)
                except ValueError as e:
                    peer.send({"ok": False, "code": "protocol", "error": f"not a JSON object: {e}"})
                    break
                self._dispatch(peer, message)
                if peer.writer.is_closing():
                    break
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
            logger.debug("connection dropped: %s", e)
        finally:
            self._peers.discard(peer)
            self._subscribers.discard(peer)
            writer.close()
            if peer.role == "worker" and peer.worker is not None:
                self.events.emit("worker_stopped", **{k: peer.worker.get(k) for k in ("rank", "node_id", "pid")})
                self._announce_worker_gone(peer.worker)
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
        op, request_id = message.get("op"), message.get("id")
        now = time.monotonic()
        try:
            if op == "hello":
                reply = self._hello(peer, message, now)
            elif peer.role is None:
                raise _Rejected("protocol", "say hello first")
            else:
                if peer.node_id is not None and self.membership is not None \
                        and self._node_peers.get(peer.node_id) is peer:
                    self.membership.heartbeat(peer.node_id, now)
                handler = getattr(self, f"_op_{op}", None)
                if handler is None:
                    raise _Rejected("protocol", f"unknown op {op!r}")
                reply = handler(peer, message, now)
        except _Rejected as e:
            peer.send({"id": request_id, "ok": False, "code": e.code, "error": str(e)})
            if e.code == "rejected":
                self.events.emit("node_rejected", op=op, error=str(e))
            if op == "hello":
                peer.writer.close()
            return
        if reply is not None and request_id is not None:
            peer.send({"id": request_id, "ok": True, **reply})
        if op in _MEMBERSHIP_OPS:
            self._after_change(now)

    def _disconnected(self, peer: _Peer) -> None:
        node_id = peer.node_id
        if node_id is None or self._node_peers.get(node_id) is not peer:
            return
        del self._node_peers[node_id]
        if not peer.left and self.membership is not None:
            self.membership.fail(node_id, "connection lost", time.monotonic())
            self._after_change(time.monotonic())

    # -------------------------------------------------------------------- ops
    def _hello(self, peer: _Peer, message: Message, now: float) -> Message:
        role = message.get("role")
        if role not in _ROLES:
            raise _Rejected("protocol", f"unknown role {role!r}; expected one of {_ROLES}")
        if message.get("version") != PROTOCOL_VERSION:
            raise _Rejected("protocol", f"protocol version {message.get('version')} is not "
                                        f"{PROTOCOL_VERSION}; install the same torchrt everywhere")
        who = f"{role} {message.get('node_id') or (message.get('info') or {}).get('rank', '')}".strip()
        if not hmac.compare_digest(str(message.get("token") or ""), str(self.config.token or "")):
            raise _Rejected("rejected", f"{who} presented a token that does not match the token of "
                                        f"the coordinator at {self.endpoint}")
        run_id = message.get("run_id")
        if role != "observer":
            if self.run_id is None:
                self.run_id = str(run_id)
            elif run_id != self.run_id:
                raise _Rejected("rejected", f"{who} belongs to run "
                                            f"'{run_id}', but the coordinator at {self.endpoint} "
                                            f"serves run '{self.run_id}'")
        peer.role = role
        if role == "node":
            self._hello_node(peer, message, now)
        elif role == "worker":
            peer.worker = dict(message.get("info") or {})
            self.events.emit("worker_started", **peer.worker)
            self._note_worker_nproc(peer.worker)
        return {"run_id": self.run_id, "store_port": self.store_port,
                "run_dir": str(Path(self.config.run_dir).resolve()), "coordinator_pid": os.getpid()}

    def _hello_node(self, peer: _Peer, message: Message, now: float) -> None:
        node_id = str(message.get("node_id") or "")
        if not node_id:
            raise _Rejected("protocol", "a node must give its node_id")
        job = dict(message.get("job") or {})
        if self.membership is None:
            self._start_job(job)
        else:
            self._check_job(node_id, job)
        assert self.membership is not None
        info = dict(message.get("info") or {})
        if self.membership.backend == "nccl" and info.get("device_kind") != "cuda":
            raise _Rejected("rejected", f"node {node_id} has no CUDA device, but this job runs "
                                        f"over nccl")
        old = self._node_peers.get(node_id)
        if old is not None and old is not peer:
            old.node_id = None
            old.writer.close()
        peer.node_id = node_id
        self._node_peers[node_id] = peer
        self.membership.connect(node_id, info, now)

    def _start_job(self, job: dict[str, Any]) -> None:
        try:
            settings = RoundSettings(
                min_nodes=int(job["min_nodes"]), max_nodes=int(job["max_nodes"]),
                last_call_timeout=float(job.get("last_call_timeout", 1.0)),
                rejoin_timeout=float(job.get("rejoin_timeout", 30.0)),
                join_timeout=float(job.get("join_timeout", 600.0)),
                backend=str(job.get("backend", "auto")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise _Rejected("protocol", f"bad job description {job!r}: {e}") from None
        self.heartbeat_timeout = float(job.get("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT))
        self._job = job
        self.membership = Membership(settings, self.events.emit)
        self.events.emit("job_configured", run_id=self.run_id, heartbeat_timeout=self.heartbeat_timeout,
                         **dataclasses.asdict(settings))

    def _check_job(self, node_id: str, job: dict[str, Any]) -> None:
        assert self._job is not None
        mine = (self._job.get("min_nodes"), self._job.get("max_nodes"))
        theirs = (job.get("min_nodes"), job.get("max_nodes"))
        if mine != theirs:
            raise _Rejected("rejected", f"node {node_id} asks for nnodes {theirs[0]}:{theirs[1]}, but run "
                                        f"'{self.run_id}' was started with {mine[0]}:{mine[1]}")

    def _node_of(self, peer: _Peer) -> str:
        if peer.role != "node" or peer.node_id is None or self._node_peers.get(peer.node_id) is not peer:
            raise _Rejected("protocol", "only a connected node may do this")
        return peer.node_id

    def _op_join(self, peer: _Peer, message: Message, now: float) -> None:
        node_id = self._node_of(peer)
        assert self.membership is not None
        if self.membership.closed:
            raise _Rejected("closed", f"run '{self.run_id}' is closed; node {node_id} cannot join")
        port = int(message.get("master_port") or 0)
        peer.join_id = message.get("id")
        self.membership.join(node_id, port, now, cause=message.get("cause"))
        return None  # answered when the round completes

    def _op_heartbeat(self, peer: _Peer, message: Message, now: float) -> None:
        return None

    def _op_leave(self, peer: _Peer, message: Message, now: float) -> Message:
        node_id = self._node_of(peer)
        assert self.membership is not None
        peer.left = True
        self.membership.leave(node_id, now)
        if message.get("close"):
            self._close(node_id, now)
        return {}

    def _op_close(self, peer: _Peer, message: Message, now: float) -> Message:
        if peer.role != "node":
            raise _Rejected("rejected", "only a node may close the rendezvous")
        self._close(peer.node_id, now)
        return {}

    def _op_status(self, peer: _Peer, message: Message, now: float) -> Message:
        limit = int(message.get("events", 20))
        return {"state": self.snapshot(), "events": self.events.recent(limit)}

    def _op_subscribe(self, peer: _Peer, message: Message, now: float) -> Message:
        """Live event stream: the reply carries what is still in memory after ``since``,
        then every new event is pushed as ``{"push": "event", "event": {...}}``."""
        since = int(message.get("since", 0))
        self._subscribers.add(peer)
        return {"events": [e for e in self.events.recent(0) if e["seq"] > since]}

    def _push_event(self, event: dict[str, Any]) -> None:
        for peer in list(self._subscribers):
            peer.send({"push": "event", "event": event})

    def _op_ping(self, peer: _Peer, message: Message, now: float) -> Message:
        return {"version": PROTOCOL_VERSION, "torch": torch.__version__}

    def _op_telemetry(self, peer: _Peer, message: Message, now: float) -> Message:
        source = {k: peer.worker[k] for k in ("rank", "node_id") if peer.worker and k in peer.worker}
        for event in message.get("events") or []:
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                continue
            fields = {k: v for k, v in event.items() if k not in ("type", "seq", "ts")}
            if event["type"] in EPHEMERAL_EVENTS:  # kept in state and pushed live, not logged
                live = {"type": event["type"], "ts": event.get("ts", time.time()), **source, **fields}
                self._datasets.apply(live)
                self._metrics.observe(live)
                for subscriber in list(self._subscribers):
                    subscriber.send({"push": EPHEMERAL_EVENTS[event["type"]], "event": live})
            else:
                recorded = self.events.emit(event["type"], **{**source, **fields})
                if not self._datasets.apply(recorded):
                    self._checkpoints.apply(recorded)
        self._state_dirty = True
        return {}

    # --------------------------------------------------------------- decisions
    def _close(self, by: str | None, now: float) -> None:
        assert self.membership is not None
        for node_id in self.membership.close(by, now):
            self._answer_join(node_id, {"ok": False, "code": "closed",
                                        "error": f"run '{self.run_id}' was closed by {by}"})

    def _after_change(self, now: float) -> None:
        membership = self.membership
        if membership is None:
            return
        completed = membership.poll(now)
        if completed is not None:
            self._announce(completed)
        self._broadcast_state()
        self._state_dirty = True

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
                peer.send({"push": "state", "round": state[0], "waiting": state[1], "closed": state[2]})

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                self._tick(time.monotonic())
            except Exception:
                logger.exception("coordinator tick failed")
                self.events.emit("error", where="coordinator tick", error="see coordinator log")

    def _tick(self, now: float) -> None:
        membership = self.membership
        if membership is not None:
            for node_id in membership.expire(self.heartbeat_timeout, now):
                peer = self._node_peers.pop(node_id, None)
                if peer is not None:
                    peer.writer.close()
            for node_id in membership.timed_out_joins(now):
                self._answer_join(node_id, {
                    "ok": False, "code": "timeout",
                    "error": f"node {node_id} waited {membership.settings.join_timeout:g}s but only "
                             f"{membership.waiting_count()} of the required {membership.settings.min_nodes} "
                             f"nodes joined: {_waiting_names(membership)}"})
            self._after_change(now)
        self._write_state()

    # ----------------------------------------------------------------- state
    def snapshot(self) -> dict[str, Any]:
        membership = self.membership.snapshot() if self.membership else None
        workers = [p.worker for p in self._peers if p.role == "worker" and p.worker]
        return {"coordinator": self._describe(), "membership": membership,
                "workers": sorted(workers, key=lambda w: w.get("rank", 0)),
                "datasets": self._datasets.view, "checkpoints": self._checkpoints.view(),
                "tensorboard": str(self._metrics.log_dir), "written_at": time.time()}

    def _write_state(self, force: bool = False) -> None:
        """Snapshot on the loop (the state is only consistent there), write in the background:
        at a thousand nodes a write takes tens of ms, which the loop must not stall for."""
        now = time.monotonic()
        due = self._state_dirty and now - self._state_written_at >= self.config.state_write_interval_s
        busy = self._state_write is not None and not self._state_write.done()
        if not force and (not due or busy):
            return
        self._state_dirty = False
        self._state_written_at = now
        text = json.dumps(self.snapshot(), separators=(",", ":"), default=str)
        if force:
            if busy:
                self._state_write.result()
            write_text_atomic(Path(self.config.run_dir) / STATE_FILE, text)
        else:
            self._state_write = self._state_writer.submit(
                write_text_atomic, Path(self.config.run_dir) / STATE_FILE, text)

    def _describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "host": self.config.host, "port": self.port,
                "store_port": self.store_port, "pid": os.getpid(), "run_id": self.run_id,
                "run_dir": str(Path(self.config.run_dir).resolve()), "started_at": self._started_at,
                "token_required": bool(self.config.token)}

    def _note_worker_nproc(self, worker: dict[str, Any]) -> None:
        node_id, nproc = worker.get("node_id"), worker.get("local_world_size")
        if self.membership and node_id in self.membership.nodes and nproc:
            self.membership.nodes[node_id].info.setdefault("nproc", nproc)


def _waiting_names(membership: Membership) -> str:
    names = [n.node_id for n in membership.nodes.values() if n.status == NodeStatus.WAITING]
    return ", ".join(names) or "none"


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
