"""torchrun's ``RendezvousHandler`` for ``--rdzv-backend=torchrt``.

The handler is thin: it keeps one connection to the job's coordinator, asks to
join the next round and blocks until the coordinator answers with the round
(rank, world size, bootstrap address). Everything the agent asks often
(``num_nodes_waiting``, ``is_closed``) is answered from a value the
coordinator pushes when it changes, so torchrun's 0.1 s monitor loop costs no
network traffic.

Workers are bootstrapped as torchrun does without a shared store
(``use_agent_store`` is False): the group-rank-0 worker hosts a fresh TCPStore
on a port its node picked when it joined, so no key or address of an earlier
round can leak into the next one. The agent-level store (rank assignment, exit
barrier) is the coordinator's store under a per-round prefix.

The handler also exports ``TORCHRT_*`` variables into the agent's environment;
torchrun copies that environment into every worker it starts after the round,
which is how ``torchrt.init()`` learns the job's backend, round and coordinator.
"""

from __future__ import annotations

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
from torch.distributed.elastic.utils.distributed import get_free_port

from torchrt.coordinator.client import CoordinatorClient
from torchrt.coordinator.server import Coordinator, CoordinatorConfig
from torchrt.errors import CoordinatorUnavailableError
from torchrt.contract import round_store_prefix
from torchrt.protocol import Message, parse_endpoint
from torchrt.rendezvous.node_info import describe_node, is_local_host
from torchrt.rendezvous.options import RendezvousOptions

logger = logging.getLogger(__name__)

BACKEND_NAME = "torchrt"
DEFAULT_PORT = 29400
ENV_PREFIX = "TORCHRT_"


class TorchrtRendezvousHandler(RendezvousHandler):
    """Joins rounds through a torchrt coordinator."""

    def __init__(self, params: RendezvousParameters, options: RendezvousOptions | None = None) -> None:
        self._params = params
        self._options = options or RendezvousOptions.from_params(params)
        host, port = parse_endpoint(params.endpoint or f"127.0.0.1:{DEFAULT_PORT}", DEFAULT_PORT)
        self._endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._host, self._port = host, port
        self._run_id = params.run_id
        self.node_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._info = describe_node(params.local_addr)
        self._client: CoordinatorClient | None = None
        self._hosted: Coordinator | None = None
        self._store: concurrent.futures.Future[dist.TCPStore] | None = None
        self._store_port = 0
        self._lock = threading.Lock()
        self._hint = 0
        self._closed = False
        self._round: Message | None = None

    # ---------------------------------------------------------- contract
    def get_backend(self) -> str:
        return BACKEND_NAME

    @property
    def use_agent_store(self) -> bool:
        return False

    def get_run_id(self) -> str:
        return self._run_id

    def next_rendezvous(self) -> RendezvousInfo:
        started = time.monotonic()
        reply = self._join(self._join_cause())
        self._round = reply
        self._hint = 0
        store = dist.PrefixStore(round_store_prefix(self._run_id, reply["round"]), self._coordinator_store().result())
        self._export_environment(reply, self._store_host)
        logger.info("torchrt round %d: node %s is group rank %d of %d (rendezvous took %.3fs)",
                    reply["round"], self.node_id, reply["rank"], reply["world_size"],
                    time.monotonic() - started)
        return RendezvousInfo(
            store, int(reply["rank"]), int(reply["world_size"]),
            RendezvousStoreInfo(str(reply["master_addr"]), int(reply["master_port"])),
        )

    def is_closed(self) -> bool:
        return self._closed

    def set_closed(self) -> None:
        self._closed = True
        self._connected().request("close")

    def num_nodes_waiting(self) -> int:
        if self._closed:
            return 0
        client = self._client
        if client is not None and client.lost.is_set() and self._round is not None:
            return 1  # the coordinator dropped us (or went away): re-rendezvous to find out
        return self._hint

    def shutdown(self) -> bool:
        """Leave and close the rendezvous: the job is over for everybody (as with c10d)."""
        ok = True
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                if client.connected:
                    client.request("leave", close=True, timeout=5)
            except Exception as e:  # shutting down; the coordinator may already be gone
                logger.info("node %s could not say goodbye to %s: %s", self.node_id, self._endpoint, e)
                ok = False
            client.close()
        self._closed = True
        self._store = None
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
            client = CoordinatorClient(
                self._endpoint, role="node", run_id=self._run_id, token=self._options.token,
                hello={"node_id": self.node_id, "info": dict(self._info),
                       "job": self._options.job(self._params.min_nodes, self._params.max_nodes)},
                heartbeat_interval=self._options.heartbeat_interval, on_push=self._on_push,
            )
            client.connect(timeout=self._options.connect_timeout)
            self._client = client
            # Dial the store now, in the background: it overlaps with waiting for the round
            # instead of following it, and N nodes no longer dial at the same instant when the
            # round is announced (c10d's store server resolves each peer's name on accept).
            self._coordinator_store(int(client.welcome["store_port"]))
            return client

    def _join(self, cause: str) -> Message:
        """Ask for the next round; a connection lost on the way is re-established and the join
        repeated (the coordinator counts the node as new), until ``connect_timeout`` runs out."""
        deadline = time.monotonic() + self._options.connect_timeout
        join_timeout = self._options.join_timeout + 2 * self._options.heartbeat_timeout
        while True:
            client = self._connected()
            try:
                return client.request("join", master_port=get_free_port(), cause=cause, timeout=join_timeout)
            except CoordinatorUnavailableError as e:
                if not client.lost.is_set() or time.monotonic() > deadline:
                    raise
                logger.warning("node %s lost the coordinator at %s while joining (%s); rejoining",
                               self.node_id, self._endpoint, e)

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
            logger.debug("not hosting the coordinator at %s (%s); joining the one there", self._endpoint, e)
            return
        self._hosted = coordinator

    @property
    def _store_host(self) -> str:
        return self._host if self._host not in ("0.0.0.0", "::") else "127.0.0.1"

    def _coordinator_store(self, port: int | None = None) -> concurrent.futures.Future[dist.TCPStore]:
        """The client of the coordinator's store, connected once per store port in the background."""
        if port is not None and (self._store is None or self._store_port != port):
            self._store, self._store_port = concurrent.futures.Future(), port

            def dial(future: concurrent.futures.Future[dist.TCPStore] = self._store) -> None:
                try:
                    future.set_result(dist.TCPStore(self._store_host, port, is_master=False, use_libuv=True,
                                                    timeout=timedelta(seconds=self._options.join_timeout)))
                except Exception as e:  # raised to next_rendezvous by result()
                    future.set_exception(e)

            threading.Thread(target=dial, name="torchrt-store-dial", daemon=True).start()
        assert self._store is not None
        return self._store

    def _on_push(self, message: Message) -> None:
        if message.get("push") == "state":
            self._hint = int(message.get("waiting") or 0)
            self._closed = self._closed or bool(message.get("closed"))

    def _export_environment(self, reply: Message, store_host: str) -> None:
        env = {
            "ENDPOINT": self._endpoint,
            "STORE": f"{store_host}:{reply['store_port']}",
            "RUN_ID": self._run_id,
            "ROUND": str(reply["round"]),
            "BACKEND": str(reply["backend"]),
            "NODE_ID": self.node_id,
            "RUN_DIR": str(self._client.welcome.get("run_dir", "")) if self._client else "",
        }
        for key, value in env.items():
            os.environ[ENV_PREFIX + key] = value
        # Set or remove: a token left in the environment by anything else must not reach workers.
        if self._options.token:
            os.environ[ENV_PREFIX + "TOKEN"] = self._options.token
        else:
            os.environ.pop(ENV_PREFIX + "TOKEN", None)


__all__ = ["BACKEND_NAME", "TorchrtRendezvousHandler"]
