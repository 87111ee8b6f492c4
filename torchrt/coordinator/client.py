"""Blocking client of the coordinator, shared by handlers, workers and the CLI.

One socket and one background thread per client. The thread reads replies and
pushed messages as they arrive and, when the client was asked to, sends a
heartbeat whenever nothing else was sent for ``heartbeat_interval`` seconds.
Callers block only in :meth:`request`, on an event set by that thread: there is
no polling anywhere on this path.
"""

from __future__ import annotations

import itertools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from torchrt.errors import CoordinatorUnavailableError, ProtocolError, error_from_reply
from torchrt.contract import PROTOCOL_VERSION, Op, Push, Role
from torchrt.protocol import MAX_LINE_BYTES, Message, decode, encode, parse_endpoint

logger = logging.getLogger(__name__)

PushHandler = Callable[[Message], None]


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Message | None = None


class CoordinatorClient:
    """A connection to the coordinator at ``endpoint`` (``HOST:PORT``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        role: Role,
        run_id: str | None = None,
        token: str | None = None,
        hello: Message | None = None,
        heartbeat_interval: float | None = None,
        on_push: PushHandler | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.host, self.port = parse_endpoint(endpoint)
        self._hello = {"op": Op.HELLO, "version": PROTOCOL_VERSION, "role": role,
                       "run_id": run_id, "token": token, **(hello or {})}
        self._heartbeat_interval = heartbeat_interval
        self._on_push = on_push
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._last_send = 0.0
        self._reader: threading.Thread | None = None
        self.lost = threading.Event()
        self.welcome: Message = {}

    # ------------------------------------------------------------ lifecycle
    def connect(self, timeout: float = 60.0) -> Message:
        """Connect and say hello, retrying refused connections until ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=max(1.0, min(10.0, timeout)))
                break
            except OSError as e:
                if time.monotonic() + delay > deadline:
                    raise CoordinatorUnavailableError(
                        f"no torchrt coordinator answered at {self.endpoint} within {timeout:g}s ({e}); "
                        f"start one with `torchrt coordinator --bind {self.endpoint}` or let a node on "
                        f"that host start it (rdzv-conf is_host=true)") from e
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        info = self._hello.get("info")
        if isinstance(info, dict) and info.get("addr", "") is None:
            info["addr"] = sock.getsockname()[0]
        self._sock = sock
        self.welcome = {}  # no heartbeat before the hello is answered
        self.lost.clear()
        self._reader = threading.Thread(target=self._read_forever, name="torchrt-client", daemon=True)
        self._reader.start()
        try:
            self.welcome = self.request(op_message=self._hello, timeout=timeout)
        except Exception:
            self.close()
            raise
        return self.welcome

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    @property
    def connected(self) -> bool:
        return self._sock is not None and not self.lost.is_set()

    # ------------------------------------------------------------- messages
    def request(self, op: str | None = None, *, timeout: float | None = 30.0,
                op_message: Message | None = None, **fields: Any) -> Message:
        """Send a request and block until its reply; raise the typed error it carries."""
        request_id = next(self._ids)
        message = dict(op_message) if op_message is not None else {"op": op, **fields}
        message["id"] = request_id
        pending = _Pending()
        with self._pending_lock:
            self._pending[request_id] = pending
        try:
            self._send(message)
            if not pending.done.wait(timeout):
                raise CoordinatorUnavailableError(
                    f"the coordinator at {self.endpoint} did not answer {message['op']!r} within {timeout:g}s")
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)
        reply = pending.reply
        if reply is None:
            raise CoordinatorUnavailableError(
                f"lost the connection to the coordinator at {self.endpoint} during {message['op']!r}")
        if not reply.get("ok"):
            raise error_from_reply(str(reply.get("code")), str(reply.get("error")))
        return reply

    def send(self, op: str, **fields: Any) -> None:
        """Send a message that expects no reply."""
        self._send({"op": op, **fields})

    def _send(self, message: Message) -> None:
        sock = self._sock
        if sock is None or self.lost.is_set():
            raise CoordinatorUnavailableError(f"not connected to the coordinator at {self.endpoint}")
        data = encode(message)
        try:
            with self._send_lock:
                sock.sendall(data)
                self._last_send = time.monotonic()
        except OSError as e:
            self._mark_lost()
            raise CoordinatorUnavailableError(
                f"lost the connection to the coordinator at {self.endpoint}: {e}") from e

    # ---------------------------------------------------------- background
    def _read_forever(self) -> None:
        sock = self._sock
        assert sock is not None
        buffer = b""
        try:
            while True:
                # select, not a socket timeout: that would also apply to other threads' sendall
                readable, _, _ = select.select([sock], [], [], self._next_heartbeat_in())
                if not readable:
                    self._heartbeat()
                    continue
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > MAX_LINE_BYTES:
                    raise ProtocolError(f"oversized message from {self.endpoint}")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line:
                        self._deliver(decode(line))
                self._heartbeat()
        except (OSError, ValueError) as e:
            logger.debug("coordinator connection %s ended: %s", self.endpoint, e)
        finally:
            self._mark_lost()

    def _next_heartbeat_in(self) -> float | None:
        if self._heartbeat_interval is None:
            return None
        return max(0.001, self._last_send + self._heartbeat_interval - time.monotonic())

    def _heartbeat(self) -> None:
        if self._heartbeat_interval is not None and self.welcome and \
                time.monotonic() - self._last_send >= self._heartbeat_interval:
            try:
                self._send({"op": Op.HEARTBEAT})
            except CoordinatorUnavailableError:
                pass

    def _deliver(self, message: Message) -> None:
        request_id = message.get("id")
        if request_id is not None:
            with self._pending_lock:
                pending = self._pending.get(request_id)
            if pending is not None:
                pending.reply = message
                pending.done.set()
        elif message.get("push") and self._on_push is not None:
            self._on_push(message)

    def _mark_lost(self) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        with self._pending_lock:
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.done.set()
        if self._on_push is not None:
            self._on_push({"push": Push.LOST})


def ping(endpoint: str, timeout: float = 2.0, token: str | None = None) -> Message | None:
    """The coordinator's ping reply at ``endpoint``, or None when nobody answers."""
    client = CoordinatorClient(endpoint, role=Role.OBSERVER, token=token)
    try:
        client.connect(timeout=timeout)
        return client.request(Op.PING, timeout=timeout)
    except CoordinatorUnavailableError:
        return None
    finally:
        client.close()
