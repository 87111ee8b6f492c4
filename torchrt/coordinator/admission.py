"""Admission to the coordinator's control port: who gets a file descriptor, for how long, and
how much of the coordinator's memory.

A connection costs the coordinator a file descriptor and buffers from the moment it is
accepted, but only one that said a valid hello belongs to the job. Until then it is *pending*
and held on a short leash (:class:`AdmissionLimits`):

* **Deadline.** ``hello_timeout_s`` (5 s) after it was accepted, a pending connection is
  closed: a timer per connection, cancelled by the hello. Idle connections and writers that
  dribble a line byte by byte are alike to it.
* **Line limit.** A pending connection's lines may be ``hello_line_bytes`` long (64 KiB, a hello
  is a few hundred bytes), an admitted one's ``line_bytes`` (8 MiB, for telemetry batches).
  The ``StreamReader`` is made with the small limit, so a pending connection has at most about
  twice that buffered before asyncio stops reading it; longer lines of an admitted connection
  are gathered piece by piece (:func:`read_line`, public ``StreamReader`` API only).
* **Cap.** At most ``max_pending`` (512) connections are pending at once. At the cap, the
  *oldest* pending connection is closed to make room for a new one once it has waited
  ``evict_after_s`` (0.25 s); until then accepting pauses and newcomers wait in the kernel's
  listen backlog, which costs the coordinator no descriptor. Closing the oldest rather than the
  newest is deliberate: with "beyond the cap, close the newcomer", whoever keeps the slots full
  locks every real node out, and a node whose connection is closed before its hello is answered
  fails its agent. A real node says its hello within milliseconds of being accepted, far below
  ``evict_after_s``, so it is never the oldest; and a node waiting in the backlog behind junk is
  accepted at least ``max_pending`` per ``evict_after_s``. The age rule also keeps a burst of a
  thousand real nodes dialling at once (their hellos not read yet) from evicting each other.

**Our own accept loop, not** ``asyncio.start_server``. On a full file table (``EMFILE``) Python's
selector loop reports the error through the loop's exception handler *for every entry of its
accept batch* (``backlog`` of them, 4,096 here) and schedules as many retries: measured with
1,100 idle connections under ``ulimit -n 1024``, 3-4 MB of identical tracebacks per second,
and the job locked out because nothing ever freed a descriptor. A rate-limiting exception
handler would only hide the spinning. :class:`Admission` accepts itself (``loop.sock_accept``,
then a short synchronous drain of what is already queued), and on ``EMFILE``, ``ENFILE``,
``ENOBUFS`` or ``ENOMEM`` closes the oldest pending connection that has waited
``evict_after_s`` (freeing a descriptor for a real node), backs off (10 ms doubling to 1 s, reset
by the next success) and warns at most once per ``warn_interval_s`` with what was suppressed.
The deadline frees the rest. Owning the loop also lets the cap act before a connection costs
a transport.

**Output bound.** :meth:`Connection.send` writes and, once the transport holds more than
``max_output_bytes`` (8 MiB) unsent, aborts the connection: a peer that never reads (a
subscriber, a client pipelining requests) cannot grow the coordinator's memory without limit.
``abort``, not ``close``: ``close`` would wait for that very peer to take the buffer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import logging
import math
import resource
import socket
import time
from collections.abc import Awaitable, Callable

from torchrt.errors import FieldError, ProtocolError
from torchrt.protocol import HELLO_LINE_BYTES, MAX_LINE_BYTES

__all__ = ["Admission", "AdmissionLimits", "Connection", "LineTooLongError", "read_line"]

logger = logging.getLogger(__name__)

ACCEPT_BACKOFF_S = (0.01, 1.0)  # first and longest wait after an accept that failed
ACCEPT_BURST = 64  # connections accepted back to back before the loop serves the others
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclasses.dataclass(frozen=True)
class AdmissionLimits:
    """How the control port treats connections before and after their hello (see the module)."""

    hello_timeout_s: float = 5.0
    hello_line_bytes: int = HELLO_LINE_BYTES
    line_bytes: int = MAX_LINE_BYTES
    max_pending: int = 512
    evict_after_s: float = 0.25
    max_output_bytes: int = 8 * 1024 * 1024
    warn_interval_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("hello_timeout_s", "evict_after_s", "warn_interval_s"):
            value = getattr(self, name)
            minimum, what = (0.0, ">= 0") if name == "evict_after_s" else (math.ulp(0.0), "> 0")
            if not _is_number(value) or not math.isfinite(value) or value < minimum:
                raise _bad(name, f"a finite number {what}", value)
        for name in ("hello_line_bytes", "line_bytes", "max_pending", "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _bad(name, "an integer >= 1", value)
        if self.hello_line_bytes > self.line_bytes:
            raise _bad("hello_line_bytes", f"an integer <= line_bytes ({self.line_bytes})", self.hello_line_bytes)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad(name: str, expected: str, got: object) -> FieldError:
    return FieldError(f"expected {expected}, got {got!r}", key=f"admission.{name}", expected=expected, got=got)


class LineTooLongError(ProtocolError):
    """A peer sent a line longer than its connection may (before or after its hello)."""


async def read_line(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The next line with its ``\\n``; ``b""`` at the end of the stream (a torn last line is
    dropped); :class:`LineTooLongError` once it is longer than ``limit`` bytes.

    A line longer than the reader's own limit is gathered in pieces: on ``LimitOverrunError``
    the bytes stay buffered and ``readexactly`` takes them.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            part = await reader.readuntil(b"\n")
            done = True
        except asyncio.IncompleteReadError:
            return b""
        except asyncio.LimitOverrunError as e:
            part = await reader.readexactly(e.consumed)
            done = False
        size += len(part)
        if size > limit:
            raise LineTooLongError(f"a line longer than {limit} bytes")
        parts.append(part)
        if done:
            return b"".join(parts)


class Connection:
    """One accepted control connection: its streams and where it stands with admission."""

    __slots__ = ("reader", "writer", "peer", "accepted_at", "admitted", "_admission", "_timer")

    def __init__(self, admission: Admission, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 accepted_at: float) -> None:
        self._admission = admission
        self.reader = reader
        self.writer = writer
        self.peer = str(writer.get_extra_info("peername"))
        self.accepted_at = accepted_at
        self.admitted = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def limits(self) -> AdmissionLimits:
        return self._admission.limits

    async def readline(self) -> bytes:
        """The next line, within the limit of where the connection stands (see :func:`read_line`)."""
        limits = self.limits
        return await read_line(self.reader, limits.line_bytes if self.admitted else limits.hello_line_bytes)

    def admit(self) -> None:
        """The connection said a valid hello: no deadline any more, the larger line limit."""
        if not self.admitted:
            self.admitted = True
            self._admission._release(self)

    def send(self, data: bytes) -> None:
        """Queue ``data``; abort the connection once more than ``max_output_bytes`` wait unsent."""
        transport = self.writer.transport
        if transport.is_closing():
            return
        transport.write(data)
        unsent = transport.get_write_buffer_size()
        if unsent > self.limits.max_output_bytes:
            logger.warning("closing the connection of %s: it does not read what the coordinator sends "
                           "(%d bytes unsent, the limit is %d)", self.peer, unsent, self.limits.max_output_bytes)
            transport.abort()

    def abort(self, why: str) -> None:
        """Close at once, dropping whatever is unsent."""
        if not self.writer.transport.is_closing():
            logger.debug("closing the connection of %s: %s", self.peer, why)
            self.writer.transport.abort()


class Admission:
    """Accepts connections on a listening socket and hands each to ``serve`` (see the module).

    ``serve(connection)`` runs for as long as the connection should live; it calls
    :meth:`Connection.admit` once the connection said a valid hello.
    """

    def __init__(self, sock: socket.socket, serve: Callable[[Connection], Awaitable[None]],
                 limits: AdmissionLimits) -> None:
        self.limits = limits
        self._sock = sock
        self._serve = serve
        self._pending: collections.OrderedDict[Connection, None] = collections.OrderedDict()
        self._accepting = 0  # accepted, streams not made yet: they count as pending
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0  # accept failures not warned about yet
        self._warned_at = -math.inf
        self.open_connections = 0

    @property
    def pending(self) -> int:
        """Connections accepted that have not said a valid hello yet."""
        return len(self._pending) + self._accepting

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sock.setblocking(False)
        self._task = loop.create_task(self._accept_forever(), name="torchrt-accept")

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections are the caller's)."""
        if self._task is not None:
            self._task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------ accepting
    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = ACCEPT_BACKOFF_S[0]
        while True:
            if self.pending >= self.limits.max_pending and not self._evict_oldest():
                await self._wait_for_room()
                continue
            try:
                accepted = [await loop.sock_accept(self._sock)]
            except ConnectionAbortedError:  # a peer gave up while queued
                continue
            except OSError as e:
                self._accept_failed(e)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, ACCEPT_BACKOFF_S[1])
                continue
            backoff = ACCEPT_BACKOFF_S[0]
            while len(accepted) < ACCEPT_BURST and self.pending + len(accepted) < self.limits.max_pending:
                try:  # what else is queued already, without a loop iteration each
                    accepted.append(self._sock.accept())
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    break
                except OSError as e:
                    self._accept_failed(e)
                    break
            now = loop.time()
            for conn, _ in accepted:
                conn.setblocking(False)
                self._accepting += 1
                loop.create_task(self._connection(conn, now))
            await asyncio.sleep(0)  # let the accepted connections say their hello

    def _evict_oldest(self) -> bool:
        """Close the oldest pending connection if it has waited ``evict_after_s``; did it?"""
        oldest = next(iter(self._pending), None)
        if oldest is None or asyncio.get_running_loop().time() - oldest.accepted_at < self.limits.evict_after_s:
            return False
        self._release(oldest)
        oldest.abort(f"{self.limits.max_pending} connections are waiting for their hello; this was the oldest")
        return True

    async def _wait_for_room(self) -> None:
        """Until a pending connection is gone or admitted, or the oldest may be evicted."""
        oldest = next(iter(self._pending), None)
        wait = self.limits.evict_after_s if oldest is None else \
            oldest.accepted_at + self.limits.evict_after_s - asyncio.get_running_loop().time()
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), max(wait, 0.001))

    def _accept_failed(self, error: OSError) -> None:
        """Make room if descriptors ran out, and warn at most once per ``warn_interval_s``."""
        exhausted = error.errno in _OUT_OF_RESOURCES
        if exhausted:
            self._evict_oldest()
        self._failures += 1
        now = time.monotonic()
        if now - self._warned_at < self.limits.warn_interval_s:
            return
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        more = f"; {self._failures - 1} more failed accepts since the last warning" if self._failures > 1 else ""
        hint = (f" (open-file limit {soft_limit}; raise it with `ulimit -n`, connections without a hello "
                f"are closed after {self.limits.hello_timeout_s:g}s)") if exhausted else ""
        logger.warning("the coordinator cannot accept connections: %s%s; %d open, %d without a hello; "
                       "retrying with back-off, next warning in %gs at the earliest%s", error, hint,
                       self.open_connections, self.pending, self.limits.warn_interval_s, more)
        self._warned_at = now
        self._failures = 0

    # ---------------------------------------------------------- connections
    async def _connection(self, sock: socket.socket, accepted_at: float) -> None:
        self.open_connections += 1
        try:
            try:
                reader, writer = await asyncio.open_connection(sock=sock, limit=self.limits.hello_line_bytes)
            finally:
                self._accepting -= 1
            connection = Connection(self, reader, writer, accepted_at)
            self._pending[connection] = None
            connection._timer = asyncio.get_running_loop().call_at(
                accepted_at + self.limits.hello_timeout_s, connection.abort,
                f"no valid hello within {self.limits.hello_timeout_s:g}s")
            try:
                await self._serve(connection)
            finally:
                self._release(connection)
                writer.close()
        except OSError as e:  # the peer was gone before its streams were made
            logger.debug("connection dropped while being accepted: %s", e)
            sock.close()
        finally:
            self.open_connections -= 1

    def _release(self, connection: Connection) -> None:
        """The connection no longer counts as pending (admitted or gone)."""
        if connection._timer is not None:
            connection._timer.cancel()
            connection._timer = None
        if connection in self._pending:
            del self._pending[connection]
            self._room.set()
