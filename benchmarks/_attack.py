"""Hostile traffic against a coordinator's control port, for ``rendezvous.py``'s ``attack`` figure.

One process, one ``selectors`` loop, two kinds of connection:

* **idle**: ``idle`` connections that connect and never send a byte; one the coordinator
  closes is opened again at once, so ``idle`` are always open or on their way;
* **junk**: ``junk`` clients that each connect, send one payload (taken in turn: a line that
  is not JSON, a 100 KiB line with no newline, a hello of an unknown protocol version, a hello of
  an unknown role), read until the coordinator closes, and start over.

``ready`` is set once every idle connection was established and every junk client sent its
first payload; on ``stop`` the process puts its counts on ``out`` and exits. The coordinator
closes a refused junk connection only at its hello deadline (see
``torchrt.coordinator.admission``), so a junk client's rounds are as fast as the coordinator
lets them be.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import selectors
import socket
import time
from typing import Any

PAYLOADS = (
    b"\x00\xff this is not JSON\n",
    b"x" * (100 * 1024),
    json.dumps({"op": "hello", "id": 1, "version": 999, "role": "node", "node_id": "junk"}).encode() + b"\n",
    json.dumps({"op": "hello", "id": 1, "version": 1, "role": "root"}).encode() + b"\n",
)


class _Conn:
    __slots__ = ("kind", "sock", "pending", "connected")

    def __init__(self, kind: str, sock: socket.socket, pending: bytes) -> None:
        self.kind = kind
        self.sock = sock
        self.pending = pending
        self.connected = False


def attack(endpoint: str, idle: int, junk: int, ready: Any, stop: Any, out: Any) -> None:
    """Body of the attacking process (see the module docstring)."""
    host, port = endpoint.rsplit(":", 1)
    address = (host, int(port))
    selector = selectors.DefaultSelector()
    counts: collections.Counter[str] = collections.Counter()
    payloads = itertools.cycle(PAYLOADS)
    established: set[int] = set()
    junk_started: set[int] = set()

    def open_one(kind: str, index: int) -> None:
        while True:
            sock = socket.socket()
            sock.setblocking(False)
            if sock.connect_ex(address) in (0, errno.EINPROGRESS):
                break
            counts[f"{kind}_connect_errors"] += 1
            sock.close()
            time.sleep(0.001)
        conn = _Conn(kind, sock, next(payloads) if kind == "junk" else b"")
        selector.register(sock, selectors.EVENT_WRITE, (conn, index))

    def finish(conn: _Conn, index: int) -> None:
        selector.unregister(conn.sock)
        conn.sock.close()
        counts[f"{conn.kind}_closed_by_coordinator"] += 1
        open_one(conn.kind, index)

    for i in range(idle):
        open_one("idle", i)
    for i in range(junk):
        open_one("junk", i)
    started = time.monotonic()
    while not stop.is_set():
        for key, _ in selector.select(0.05):
            conn, index = key.data
            try:
                if not conn.connected:
                    error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise OSError(error, "connect failed")
                    conn.connected = True
                    if conn.kind == "idle":
                        established.add(index)
                        selector.modify(conn.sock, selectors.EVENT_READ, key.data)
                        continue
                    counts["junk_sent"] += 1
                    junk_started.add(index)
                if conn.pending:
                    sent = conn.sock.send(conn.pending)
                    conn.pending = conn.pending[sent:]
                    if not conn.pending:
                        selector.modify(conn.sock, selectors.EVENT_READ, key.data)
                    continue
                if not conn.sock.recv(1 << 16):
                    finish(conn, index)
            except BlockingIOError:
                continue
            except OSError:  # reset by the coordinator, or a refused connect
                finish(conn, index)
        if not ready.is_set() and len(established) == idle and len(junk_started) == junk:
            counts["ready_after_ms"] = int(1000 * (time.monotonic() - started))
            ready.set()
    out.put(dict(counts))
