"""Listening sockets bound to one address, and a libuv ``TCPStore`` server on one of them.

The coordinator (its control port and its store) and the rendezvous handler (a
round's bootstrap store) bind only the address they are given: a store that
binds its port itself, as c10d's does, listens on every interface.
"""

from __future__ import annotations

import socket

import torch.distributed as dist

__all__ = ["LISTEN_BACKLOG", "listen_socket", "store_server"]

LISTEN_BACKLOG = 4096  # a thousand nodes may dial at once


def store_server(sock: socket.socket, host: str) -> dist.TCPStore:
    """A libuv ``TCPStore`` server on ``sock``, a listening socket bound to one address, which it
    takes over; ``host`` is how its own client dials it. (A store that binds its port itself, as
    c10d's does, listens on every interface whatever host it is given.)"""
    return dist.TCPStore(host, sock.getsockname()[1], is_master=True, wait_for_workers=False,
                         use_libuv=True, master_listen_fd=sock.detach())


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host`` only (port 0: a free one)."""
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
