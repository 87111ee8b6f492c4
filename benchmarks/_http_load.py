"""HTTP load for the monitor benchmark: ``python _http_load.py URL SECONDS CONNECTIONS``.

``CONNECTIONS`` keep-alive connections each GET ``URL`` back to back for ``SECONDS`` (one request
in flight per connection; a new connection whenever the server closes one, as Werkzeug does after
every response), checking that every answer is a 200 with a body. Prints one JSON line: requests,
errors, seconds, rps, the latency p50/p99 in ms, whether connections were kept alive and
this process's own CPU per request.

It measures the server, so it is made to cost as little CPU as it can on the machine it shares:
one thread, non-blocking sockets under a selector, the request bytes built once, and only the
status line and ``Content-Length`` read from each answer (``http.client`` with a thread per
connection cost about as much CPU per request as the server it was loading). A process of its
own, so its Python does not share a GIL with what it measures.
"""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import sys
import time
import urllib.parse

HEADER_END = b"\r\n\r\n"


class Connection:
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, address: tuple[str, int], request: bytes) -> None:
        self.address, self.request = address, request
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.began = 0.0
        self.answered = 0  # answers on the current socket (> 1: kept alive)

    def open(self, selector: selectors.BaseSelector) -> None:
        self.sock = socket.create_connection(self.address, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer, self.answered = b"", 0
        selector.register(self.sock, selectors.EVENT_READ, self)

    def close(self, selector: selectors.BaseSelector) -> None:
        if self.sock is not None:
            selector.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def send(self) -> None:
        assert self.sock is not None
        self.began = time.perf_counter()
        self.sock.sendall(self.request)  # a few hundred bytes: the kernel's buffer takes them at once

    def answer(self) -> tuple[bool, bool] | None:
        """Read what arrived: None while the answer is incomplete, else (ok, server_closes)."""
        assert self.sock is not None
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("closed by the server mid-answer")
        self.buffer += chunk
        end = self.buffer.find(HEADER_END)
        if end < 0:
            return None
        head = self.buffer[:end].split(b"\r\n")
        fields = dict(line.split(b":", 1) for line in head[1:] if b":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        length = int(fields.get(b"content-length", b"-1"))
        if length < 0:
            raise ConnectionError("an answer without Content-Length")
        if len(self.buffer) < end + len(HEADER_END) + length:
            return None
        self.buffer = self.buffer[end + len(HEADER_END) + length:]
        self.answered += 1
        ok = head[0].split(b" ", 2)[1] == b"200" and length > 0
        return ok, fields.get(b"connection", b"").lower() == b"close"


def main(url: str, seconds: float, connections: int) -> None:
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    request = f"GET {target} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\nAccept: */*\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    pool = [Connection(address, request) for _ in range(connections)]
    latencies: list[float] = []
    errors = 0
    kept_alive = False
    began, cpu_began = time.monotonic(), time.process_time()
    deadline = began + seconds
    for conn in pool:
        conn.open(selector)
        conn.send()
    while pool and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            conn = key.data
            try:
                answered = conn.answer()
            except (OSError, ValueError, IndexError):
                errors += 1
                conn.close(selector)
                conn.open(selector)
                conn.send()
                continue
            if answered is None:
                continue
            ok, closes = answered
            latencies.append((time.perf_counter() - conn.began) * 1e3)
            errors += not ok
            kept_alive = kept_alive or conn.answered > 1
            if closes:
                conn.close(selector)
                conn.open(selector)
            conn.send()
    took, cpu = time.monotonic() - began, time.process_time() - cpu_began
    for conn in pool:
        conn.close(selector)
    flat = sorted(latencies)
    print(json.dumps({"requests": len(flat), "errors": errors, "seconds": round(took, 3),
                      "rps": round(len(flat) / took, 1), "keep_alive": kept_alive,
                      "client_cpu_ms_per_request": round(cpu / max(len(flat), 1) * 1e3, 3),
                      "latency_ms": {"p50": round(statistics.median(flat), 3) if flat else None,
                                     "p99": round(flat[int(len(flat) * 0.99)], 3) if flat else None}}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
