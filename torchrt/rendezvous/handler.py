"""torchrun's ``RendezvousHandler`` for ``--rdzv-backend=torchrt``.

The handler is thin: it keeps one connection to the job's coordinator, asks to
join the next round and blocks until the coordinator answers with the round
(rank, world size, bootstrap address). Everything the agent asks often
(``num_nodes_waiting``, ``is_closed``) is answered from a value the
coordinator pushes when it changes, so torchrun's 0.1 s monitor loop costs no
network traffic.

``use_agent_store`` is True: workers connect as clients to a bootstrap store
that the group-rank-0 *handler* serves, fresh for every round, on a socket
bound to the node's own rendezvous address (:mod:`torchrt.rendezvous.bootstrap`;
a store the rank-0 worker started itself would listen on every interface). The
agent-level store (rank assignment, exit barrier) is the coordinator's store
under a per-round prefix.

``--rdzv-endpoint=HOST:0`` works as with c10d (``--standalone`` uses
``localhost:0``): the node that hosts the coordinator binds a free port, and
this handler and the workers (``TORCHRT_ENDPOINT``) dial the port it got. Only
the hosting node can know that port, so ``HOST:0`` is for single-node jobs.

Closing follows c10d: ``set_closed()`` and ``shutdown()`` close the rendezvous
for everybody even on a handler that never joined (it connects to do so), and
``is_closed()`` on a fresh handler asks the coordinator.

While connected, the handler samples its machine and the agent's worker
processes once a second (:class:`~torchrt.telemetry.node.NodeStatsThread`,
``node_stats_interval``) and reports them over its connection, so the job view
shows the workers of any torchrun script, also one that never imports torchrt;
its last sample goes out, logged, when it leaves.

The handler also exports ``TORCHRT_*`` variables into the agent's environment;
torchrun copies that environment into every worker it starts after the round,
which is how ``torchrt.init()`` learns the job's backend, round and coordinator.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import threading
import time
import uuid
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
)

from torchrt.coordinator.client import CoordinatorClient
from torchrt.coordinator.server import Coordinator, CoordinatorConfig
from torchrt.errors import CoordinatorUnavailableError, RendezvousConfigError, RoundSupersededError
from torchrt.contract import DEFAULT_HOST, DEFAULT_PORT, Env, EventType, Op, Push, Role, round_store_prefix
from torchrt.protocol import Message, connect_host, format_endpoint, parse_endpoint
from torchrt.rendezvous.bootstrap import BootstrapStore
from torchrt.rendezvous.node_info import describe_node, is_local_host
from torchrt.rendezvous.options import RendezvousOptions
from torchrt.telemetry.node import NodeStatsThread

logger = logging.getLogger(__name__)

BACKEND_NAME = "torchrt"
SHUTDOWN_TIMEOUT_S = 5.0  # shutdown: how long to look for a coordinator to close, and to say goodbye
EXIT_LEAVE_TIMEOUT_S = 2.0  # interpreter exit without shutdown(): how long to say goodbye


class TorchrtRendezvousHandler(RendezvousHandler):
    """Joins rounds through a torchrt coordinator."""

    def __init__(self, params: RendezvousParameters, options: RendezvousOptions | None = None) -> None:
        self._params = params
        self._options = options or RendezvousOptions.from_params(params)
        host, port = parse_endpoint(params.endpoint or f"{DEFAULT_HOST}:{DEFAULT_PORT}", DEFAULT_PORT)
        self._host, self._port = host, port
        self._endpoint = format_endpoint(host, port)
        if port == 0 and not self._should_host():
            raise RendezvousConfigError(
                f"--rdzv-endpoint {self._endpoint} asks the node that hosts the coordinator to pick a free "
                f"port, but this node does not host it (is_host=false, or {host} is not this machine); "
                f"give the coordinator's port")
        self._run_id = params.run_id
        self.node_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._info = describe_node(params.local_addr)
        self._client: CoordinatorClient | None = None
        self._hosted: Coordinator | None = None
        self._store: concurrent.futures.Future[dist.TCPStore] | None = None
        self._store_port = 0
        self._bootstrap = BootstrapStore()
        self._addr: str | None = None  # this node's address as the coordinator knows it
        self._lock = threading.Lock()
        self._hint = (0, 0)  # (round, nodes waiting) as last pushed: a hint is about one round
        self._closed = False
        self._round: Message | None = None
        self._stats: NodeStatsThread | None = None  # samples this node while it is connected

    # ---------------------------------------------------------- contract
    def get_backend(self) -> str:
        return BACKEND_NAME

    @property
    def use_agent_store(self) -> bool:
        """True: every worker connects as a client to ``MASTER_ADDR:MASTER_PORT``, the round's
        bootstrap store that this handler serves when its node is group rank 0 (fresh each round,
        bound to the node's rendezvous address), instead of the rank-0 worker starting a store
        server there itself, which would listen on every interface."""
        return True

    def get_run_id(self) -> str:
        return self._run_id

    def next_rendezvous(self) -> RendezvousInfo:
        started = time.monotonic()
        cause = self._join_cause()
        try:
            while True:
                reply = self._join(cause)
                self._bootstrap.settle(int(reply["rank"]) == 0, str(reply["master_addr"]))
                if self._confirm(reply):
                    break
                cause = "membership changed"
        except BaseException:
            self._bootstrap.close()
            raise
        self._round = reply
        store = dist.PrefixStore(round_store_prefix(self._run_id, reply["round"]), self._coordinator_store().result())
        self._export_environment(reply)
        logger.info("torchrt round %d: node %s is group rank %d of %d (rendezvous took %.3fs)",
                    reply["round"], self.node_id, reply["rank"], reply["world_size"],
                    time.monotonic() - started)
        return RendezvousInfo(
            store, int(reply["rank"]), int(reply["world_size"]),
            RendezvousStoreInfo(str(reply["master_addr"]), int(reply["master_port"])),
        )

    def is_closed(self) -> bool:
        if not self._closed and self._client is None:  # never connected: the coordinator knows
            self._connected()
        return self._closed

    def set_closed(self) -> None:
        self._connected().request(Op.CLOSE)
        self._closed = True

    def num_nodes_waiting(self) -> int:
        if self._closed:
            return 0
        client = self._client
        if client is not None and client.lost.is_set() and self._round is not None:
            return 1  # the coordinator dropped us (or went away): re-rendezvous to find out
        hint_round, waiting = self._hint
        # A push about an earlier round (it may arrive after the join reply) says nothing about this one;
        # the coordinator pushes this round's state right after the reply, and every change after it.
        return waiting if self._round is not None and hint_round == self._round["round"] else 0

    def shutdown(self) -> bool:
        """Leave and close the rendezvous: the job is over for everybody (as with c10d), also when
        this node never joined. False when no coordinator could be told (none runs, or it went)."""
        ok = True
        atexit.unregister(self._leave_at_exit)
        self._stop_stats()
        with self._lock:
            client, self._client = self._client, None
        if client is None and self._hosted is None:  # never connected: find the coordinator to close
            try:
                client = self._connect(timeout=min(SHUTDOWN_TIMEOUT_S, self._options.connect_timeout))
            except CoordinatorUnavailableError as e:
                logger.info("node %s found no coordinator to close at %s: %s", self.node_id, self._endpoint, e)
                ok = False
        if client is not None:
            try:
                if client.connected:
                    client.request(Op.LEAVE, close=True, timeout=SHUTDOWN_TIMEOUT_S)
                else:
                    ok = False
            except Exception as e:  # shutting down; the coordinator may already be gone
                logger.info("node %s could not say goodbye to %s: %s", self.node_id, self._endpoint, e)
                ok = False
            client.close()
        self._closed = True
        self._store = None
        self._bootstrap.close()
        if self._hosted is not None:
            self._hosted.stop()
            self._hosted = None
        return ok

    # ------------------------------------------------------------ helpers
    @property
    def round(self) -> Message | None:
        """The last round this node joined (as the coordinator described it)."""
        return self._round

    @property
    def hosted_coordinator(self) -> Coordinator | None:
        return self._hosted

    def _connected(self) -> CoordinatorClient:
        with self._lock:
            if self._client is not None and self._client.connected:
                return self._client
            if self._client is not None:
                self._client.close()
            if self._hosted is None and self._should_host():
                self._try_to_host()
            client = self._connect(timeout=self._options.connect_timeout)
            self._client = client
            interval = self._options.node_stats_interval
            if self._stats is None and interval > 0:
                self._stats = NodeStatsThread(self._send_stats, interval=interval).start()
            # After the hosted coordinator's own exit hook, so that (last in, first out) it runs first.
            atexit.unregister(self._leave_at_exit)
            atexit.register(self._leave_at_exit)
            # Dial the store now, in the background: it overlaps with waiting for the round
            # instead of following it, and N nodes no longer dial at the same instant when the
            # round is announced (c10d's store server resolves each peer's name on accept).
            self._coordinator_store(int(client.welcome["store_port"]))
            return client

    def _leave_at_exit(self) -> None:
        """Say goodbye when the agent exits without ``shutdown()``: torchrun skips it on a signal
        (Ctrl-C, SIGTERM), and the coordinator would otherwise record this node as dead and re-form.
        The rendezvous stays open: other nodes may go on."""
        self._stop_stats()
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.connected:
                client.request(Op.LEAVE, reason="agent exited without shutting down (signal)",
                               timeout=EXIT_LEAVE_TIMEOUT_S)
        except Exception as e:  # the interpreter is going away; nothing else to do
            logger.info("node %s could not say goodbye at exit: %s", self.node_id, e)
        client.close()

    def _send_stats(self, kind: EventType, fields: dict[str, object]) -> bool:
        """One sample of this node (the stats thread's) over the current connection; False while
        there is none (the handler is reconnecting)."""
        client = self._client
        if client is None or not client.connected:
            return False
        client.request(Op.TELEMETRY, events=[{"type": kind, **fields}], timeout=SHUTDOWN_TIMEOUT_S)
        return True

    def _stop_stats(self) -> None:
        """Stop sampling; the last sample goes out, logged, while the connection is still up."""
        stats, self._stats = self._stats, None
        if stats is not None:
            stats.stop(last_word=True)

    def _connect(self, timeout: float) -> CoordinatorClient:
        """A new connection to the coordinator, hello said (it also says whether the rendezvous is
        closed, which no push would repeat to a newcomer)."""
        info = dict(self._info)  # the client fills in "addr" from its socket when it is None
        client = CoordinatorClient(
            self._endpoint, role=Role.NODE, run_id=self._run_id, token=self._options.token,
            hello={"node_id": self.node_id, "info": info,
                   "job": self._options.job(self._params.min_nodes, self._params.max_nodes)},
            heartbeat_interval=self._options.heartbeat_interval, on_push=self._on_push,
        )
        client.connect(timeout=timeout)
        self._addr = str(info["addr"])
        self._closed = self._closed or bool(client.welcome.get("closed"))
        return client

    def _join(self, cause: str) -> Message:
        """Ask for the next round; a connection lost on the way is re-established and the join
        repeated (the coordinator counts the node as new), until ``connect_timeout`` runs out."""
        deadline = time.monotonic() + self._options.connect_timeout
        join_timeout = self._options.join_timeout + 2 * self._options.heartbeat_timeout
        while True:
            client = self._connected()
            assert self._addr is not None
            try:
                return client.request(Op.JOIN, master_port=self._bootstrap.listen(self._addr), cause=cause,
                                      timeout=join_timeout)
            except CoordinatorUnavailableError as e:
                if not client.lost.is_set() or time.monotonic() > deadline:
                    raise
                logger.warning("node %s lost the coordinator at %s while joining (%s); rejoining",
                               self.node_id, self._endpoint, e)

    def _confirm(self, reply: Message) -> bool:
        """Confirm the round the join got and wait until every participant did (see
        :mod:`torchrt.coordinator.confirm`); False when it was replaced first: join again."""
        try:
            self._connected().request(Op.READY, round=reply["round"],
                                      timeout=self._options.join_timeout + 2 * self._options.heartbeat_timeout)
        except RoundSupersededError as e:
            logger.info("node %s: round %s will not start (%s); joining the next one", self.node_id,
                        reply["round"], e)
            return False
        return True

    def _join_cause(self) -> str:
        """Why the agent is asking for a round: it cannot tell us, but its past answers can."""
        if self._round is None:
            return "first round"
        if self.num_nodes_waiting() > 0:
            return "membership changed"
        return "local workers failed"

    def _should_host(self) -> bool:
        if self._options.is_host is not None:
            return self._options.is_host
        return is_local_host(self._host)

    def _try_to_host(self) -> None:
        coordinator = Coordinator(CoordinatorConfig(
            run_dir=self._options.run_dir_for(self._run_id), host=self._host, port=self._port,
            run_id=self._run_id, token=self._options.token))
        try:
            coordinator.start()
        except OSError as e:
            if self._port == 0:
                raise CoordinatorUnavailableError(
                    f"could not host the coordinator on a free port of {self._host}: {e}") from e
            logger.debug("not hosting the coordinator at %s (%s); joining the one there", self._endpoint, e)
            return
        self._hosted = coordinator
        if self._port == 0:  # HOST:0: from now on this node and its workers dial the port it got
            self._port = coordinator.port
            self._endpoint = format_endpoint(self._host, self._port)

    def _coordinator_store(self, port: int | None = None) -> concurrent.futures.Future[dist.TCPStore]:
        """The client of the coordinator's store, connected once per store port in the background."""
        if port is not None and (self._store is None or self._store_port != port):
            self._store, self._store_port = concurrent.futures.Future(), port

            def dial(future: concurrent.futures.Future[dist.TCPStore] = self._store) -> None:
                try:
                    future.set_result(dist.TCPStore(connect_host(self._host), port, is_master=False, use_libuv=True,
                                                    timeout=timedelta(seconds=self._options.join_timeout)))
                except Exception as e:  # raised to next_rendezvous by result()
                    future.set_exception(e)

            threading.Thread(target=dial, name="torchrt-store-dial", daemon=True).start()
        assert self._store is not None
        return self._store

    def _on_push(self, message: Message) -> None:
        if message.get("push") == Push.STATE:
            self._hint = (int(message.get("round") or 0), int(message.get("waiting") or 0))
            self._closed = self._closed or bool(message.get("closed"))

    def _export_environment(self, reply: Message) -> None:
        os.environ.update({
            Env.ENDPOINT: self._endpoint,
            Env.STORE: format_endpoint(connect_host(self._host), int(reply["store_port"])),
            Env.RUN_ID: self._run_id,
            Env.ROUND: str(reply["round"]),
            Env.BACKEND: str(reply["backend"]),
            Env.NODE_ID: self.node_id,
            Env.RUN_DIR: str(self._client.welcome.get("run_dir", "")) if self._client else "",
        })
        # Set or remove: a token left in the environment by anything else must not reach workers.
        if self._options.token:
            os.environ[Env.TOKEN] = self._options.token
        else:
            os.environ.pop(Env.TOKEN, None)


__all__ = ["BACKEND_NAME", "TorchrtRendezvousHandler"]
