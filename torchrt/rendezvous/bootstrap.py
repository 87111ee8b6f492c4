"""The workers' bootstrap store: one fresh ``TCPStore`` per round, hosted by group rank 0's handler.

torchrun gives every worker ``MASTER_ADDR``/``MASTER_PORT`` from the round's
``bootstrap_store_info``, and ``init_process_group`` builds its store there
(``torch/distributed/rendezvous.py``). With ``use_agent_store`` False the
group-rank-0 *worker* starts that store's server itself, and a c10d store that
binds its own port listens on every interface, whatever host it is given. So
the torchrt handler says ``use_agent_store`` True, which makes every worker a
client, and serves the store from the agent instead: on a socket it bound to
the node's own rendezvous address and handed to ``TCPStore`` with
``master_listen_fd``.

Every join binds a new socket on a free port and announces that port to the
coordinator; the node that comes out as group rank 0 serves the round's store
on it, the others close theirs. The previous round's store is dropped before
the next join, so no key and no address of an earlier round (a dead peer's
gloo address above all) can reach the next one. The socket listens from the
join on, so workers of other nodes that dial before the server runs wait in
its backlog instead of being refused.
"""

from __future__ import annotations

import logging
import socket

import torch.distributed as dist

from torchrt.coordinator.sockets import listen_socket, store_server
from torchrt.errors import RendezvousConnectionError

logger = logging.getLogger(__name__)


class BootstrapStore:
    """The bootstrap store of one node across rounds (at most one socket or server at a time)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._server: dist.TCPStore | None = None

    def listen(self, addr: str) -> int:
        """Drop the previous round's store and listen on ``addr``, a free port; returns the port."""
        self.close()
        try:
            self._sock = listen_socket(addr, 0)
        except OSError as e:
            raise RendezvousConnectionError(
                f"cannot listen for the workers' bootstrap store on {addr} (this node's address: "
                f"--local-addr, or the interface that reaches the coordinator): {e}") from e
        return int(self._sock.getsockname()[1])

    def settle(self, is_group_rank_zero: bool, addr: str) -> None:
        """The round is formed: serve its store on the socket (group rank 0) or release it."""
        sock, self._sock = self._sock, None
        if sock is None:
            raise RuntimeError("BootstrapStore.settle() called without a socket from listen()")
        if not is_group_rank_zero:
            sock.close()
            return
        port = sock.getsockname()[1]
        self._server = store_server(sock, addr)
        logger.debug("serving the workers' bootstrap store on %s port %d", addr, port)

    def close(self) -> None:
        """Stop serving (the server stops with its last reference) and release any socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._server = None
