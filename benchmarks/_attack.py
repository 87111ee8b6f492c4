"""Hostile traffic against a coordinator's control port, for ``rendezvous.py``'s ``attack`` figure.

One process, one ``selectors`` loop, two kinds of connection:

* **idle**: ``idle`` connections that connect and never send a byte; one the coordinator
  closes is opened again at once, so ``idle`` are always open or on their way;
* **junk**: ``junk`` clients that each connect, send one payload (taken in turn: a line that
  is not JSON, a 100 KiB line with no newline, a hello of an unknown protocol version, a hello of
  an unknown role), and as soon as the coordinator answers or closes, or ``JUNK_PATIENCE_S``
  after sending, close and start over. They do not wait for the coordinator to close a refused
  connection (it would only do so at the hello deadline), so their pace is the coordinator's.

``ready`` is set once every idle connection was established and every junk client sent its
first payload; on ``stop`` the process puts its counts on ``out`` and exits.
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

from torchrt.contract import PROTOCOL_VERSION, Op, Role

JUNK_PATIENCE_S = 0.5
PAYLOADS = (
    b"\x00\xff this is not JSON\n",
    b"x" * (100 * 1024),
    json.dumps({"op": Op.HELLO.value, "id": 1, "version": PROTOCOL_VERSION + 1, "role": Role.NODE.value,
                "node_id": "junk"}).encode() + b"\n",
    json.dumps({"op": Op.HELLO.value, "id": 1, "version": PROTOCOL_VERSION, "role": "root"}).encode() + b"\n",
)


class _Conn:
    __slots__ = ("kind", "sock", "pending", "connected", "sent_at")

    def __init__(self, kind: str, sock: socket.socket, pending: bytes) -> None:
        self.kind = kind
        self.sock = sock
        self.pending = pending
        self.connected = False
        self.sent_at: float | None = None  # junk: when its payload was out


def attack(endpoint: str, idle: int, junk: int, ready: Any, stop: Any, out: Any) -> None:
    """Body of the attacking process (see the module docstring)."""
    host, port = endpoint.rsplit(":", 1)
    address = (host, int(port))
    selector = selectors.DefaultSelector()
    counts: collections.Counter[str] = collections.Counter()
    payloads = itertools.cycle(PAYLOADS)
    established: set[int] = set()
    junk_started: set[int] = set()
    waiting: dict[int, _Conn] = {}  # junk that sent its payload, by index

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

    def finish(conn: _Conn, index: int, how: str) -> None:
        selector.unregister(conn.sock)
        conn.sock.close()
        counts[f"{conn.kind}_{how}"] += 1
        waiting.pop(index, None)
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
                        conn.sent_at = time.monotonic()
                        waiting[index] = conn
                    continue
                finish(conn, index, "answered" if conn.sock.recv(1 << 16) else "closed_by_coordinator")
            except BlockingIOError:
                continue
            except OSError:  # reset by the coordinator, or a refused connect
                finish(conn, index, "closed_by_coordinator")
        now = time.monotonic()
        for index, conn in [(i, c) for i, c in waiting.items() if now - c.sent_at > JUNK_PATIENCE_S]:
            finish(conn, index, "gave_up")
        if not ready.is_set() and len(established) == idle and len(junk_started) == junk:
            counts["ready_after_ms"] = int(1000 * (time.monotonic() - started))
            ready.set()
    out.put(dict(counts))
