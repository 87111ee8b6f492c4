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
* **Cap.** At most ``max_pending`` connections are pending at once: by default 1,024 (a
  thousand nodes may dial at once, and each is pending until its hello is read), but never more
  than half the soft open-file limit, so that pending connections alone cannot take every
  descriptor (512 under ``ulimit -n 1024``). At the cap a newcomer is taken in place of a
  *victim*: the oldest pending connection that has sent nothing at all for
  ``evict_silent_after_s`` (20 ms; "nothing" is checked in the kernel with ``MSG_PEEK``, not
  only in what the loop has read), or else the oldest one pending for ``evict_after_s`` (1 s, a
  line that is still not complete). With no victim, accepting pauses and newcomers wait in the
  kernel's listen backlog, which costs the coordinator no descriptor.
  Closing the oldest rather than the newcomer is deliberate: with "beyond the cap, close the
  newcomer", whoever keeps the slots full locks every real node out, and a node whose connection
  closes before its hello is answered fails its agent. A real node sends its hello as soon as it
  is connected, so it is neither silent nor the oldest; idle connections are. And a burst of real
  nodes beyond the cap (hellos sent, not read yet) is never evicted: it waits in the backlog.

**Our own accept loop, not** ``asyncio.start_server``. On a full file table (``EMFILE``) Python's
selector loop reports the error through the loop's exception handler *for every entry of its
accept batch* (``backlog`` of them, 4,096 here) and schedules as many retries: measured with
1,100 idle connections under ``ulimit -n 1024``, 3-4 MB of identical tracebacks per second,
and the job locked out because nothing ever freed a descriptor. A rate-limiting exception
handler would only hide the spinning. :class:`Admission` accepts itself (``loop.sock_accept``,
then a short synchronous drain of what is already queued), and on ``EMFILE``, ``ENFILE``,
``ENOBUFS`` or ``ENOMEM`` lowers the cap to what was pending less ``FD_HEADROOM`` (64
descriptors stay free for files, the store and real nodes) and closes victims down to it, backs off (10 ms doubling to 1 s, reset
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
DEFAULT_MAX_PENDING = 1024  # a thousand nodes may dial at once, each pending until its hello is read
FD_HEADROOM = 64  # descriptors kept free for files and the store once the limit was hit
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclasses.dataclass(frozen=True)
class AdmissionLimits:
    """How the control port treats connections before and after their hello (see the module)."""

    hello_timeout_s: float = 5.0
    hello_line_bytes: int = HELLO_LINE_BYTES
    line_bytes: int = MAX_LINE_BYTES
    max_pending: int | None = None  # None: DEFAULT_MAX_PENDING, at most half the soft open-file limit
    evict_silent_after_s: float = 0.02
    evict_after_s: float = 1.0
    max_output_bytes: int = 8 * 1024 * 1024
    warn_interval_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("hello_timeout_s", "warn_interval_s", "evict_silent_after_s", "evict_after_s"):
            value = getattr(self, name)
            positive = name in ("hello_timeout_s", "warn_interval_s")
            if not _is_number(value) or not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise _bad(name, f"a finite number {'> 0' if positive else '>= 0'}", value)
        for name in ("hello_line_bytes", "line_bytes", "max_pending", "max_output_bytes"):
            value = getattr(self, name)
            if (value is not None or name != "max_pending") and \
                    (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise _bad(name, "an integer >= 1", value)
        if self.hello_line_bytes > self.line_bytes:
            raise _bad("hello_line_bytes", f"an integer <= line_bytes ({self.line_bytes})", self.hello_line_bytes)
        if self.evict_silent_after_s > self.evict_after_s:
            raise _bad("evict_silent_after_s", f"a number <= evict_after_s ({self.evict_after_s:g})",
                       self.evict_silent_after_s)

    def pending_cap(self) -> int:
        """``max_pending``, or by default 1,024 but at most half the soft open-file limit, so that
        connections without a hello cannot take every descriptor."""
        if self.max_pending is not None:
            return self.max_pending
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return DEFAULT_MAX_PENDING if soft == resource.RLIM_INFINITY else max(1, min(DEFAULT_MAX_PENDING, soft // 2))


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

    __slots__ = ("sock", "peer", "accepted_at", "admitted", "heard", "reader", "writer", "_admission", "_timer",
                 "_doomed")

    def __init__(self, admission: Admission, sock: socket.socket, accepted_at: float) -> None:
        self._admission = admission
        self.sock = sock
        try:
            self.peer = str(sock.getpeername())
        except OSError:
            self.peer = "a peer that already left"
        self.accepted_at = accepted_at
        self.admitted = False
        self.heard = False  # some bytes of it were read
        self.reader: asyncio.StreamReader | None = None  # set once its streams are made
        self.writer: asyncio.StreamWriter | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._doomed = False  # aborted before its streams were made

    @property
    def limits(self) -> AdmissionLimits:
        return self._admission.limits

    async def readline(self) -> bytes:
        """The next line, within the limit of where the connection stands (see :func:`read_line`)."""
        assert self.reader is not None
        limits = self.limits
        return await read_line(self.reader, limits.line_bytes if self.admitted else limits.hello_line_bytes)

    def admit(self) -> None:
        """The connection said a valid hello: no deadline any more, the larger line limit."""
        if not self.admitted:
            self.admitted = True
            self._admission._release(self)

    def send(self, data: bytes) -> None:
        """Queue ``data``; abort the connection once more than ``max_output_bytes`` wait unsent."""
        assert self.writer is not None
        transport = self.writer.transport
        if transport.is_closing():
            return
        transport.write(data)
        unsent = transport.get_write_buffer_size()
        if unsent > self.limits.max_output_bytes:
            logger.warning("closing the connection of %s: it does not read what the coordinator sends "
                           "(%d bytes unsent, the limit is %d)", self.peer, unsent, self.limits.max_output_bytes)
            transport.abort()

    def silent(self) -> bool:
        """Nothing came from the peer yet: none read, none waiting in the kernel."""
        if self.heard:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""  # b"": it left
        except BlockingIOError:
            return True
        except OSError:  # closed meanwhile
            return True

    def abort(self, why: str) -> None:
        """Close at once, dropping whatever is unsent."""
        logger.debug("closing the connection of %s: %s", self.peer, why)
        if self.writer is None:
            self._doomed = True
        elif not self.writer.transport.is_closing():
            self.writer.transport.abort()


class _Protocol(asyncio.StreamReaderProtocol):
    """The stream protocol, noting that the peer sent something (:meth:`Connection.silent`)."""

    def __init__(self, reader: asyncio.StreamReader, connection: Connection) -> None:
        super().__init__(reader)
        self._connection = connection

    def data_received(self, data: bytes) -> None:
        self._connection.heard = True
        super().data_received(data)


class Admission:
    """Accepts connections on a listening socket and hands each to ``serve`` (see the module).

    ``serve(connection)`` runs for as long as the connection should live; it calls
    :meth:`Connection.admit` once the connection said a valid hello.
    """

    def __init__(self, sock: socket.socket, serve: Callable[[Connection], Awaitable[None]],
                 limits: AdmissionLimits) -> None:
        self.limits = limits
        self.cap = limits.pending_cap()
        self._sock = sock
        self._serve = serve
        self._pending: collections.OrderedDict[Connection, None] = collections.OrderedDict()  # oldest first
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0  # accept failures not warned about yet
        self._warned_at = -math.inf
        self.open_connections = 0

    @property
    def pending(self) -> int:
        """Connections accepted that have not said a valid hello yet."""
        return len(self._pending)

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
            if not self._room_for_one():
                await self._wait_for_room()
                continue
            try:
                sock, _ = await loop.sock_accept(self._sock)
            except ConnectionAbortedError:  # a peer gave up while queued
                continue
            except OSError as e:
                self._accept_failed(e)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, ACCEPT_BACKOFF_S[1])
                continue
            backoff = ACCEPT_BACKOFF_S[0]
            self._take(sock, loop)
            for _ in range(ACCEPT_BURST - 1):  # what else is queued already, without a loop iteration each
                if not self._room_for_one():
                    break
                try:
                    sock, _ = self._sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    break
                except OSError as e:
                    self._accept_failed(e)
                    break
                self._take(sock, loop)
            await asyncio.sleep(0)  # let the accepted connections say their hello

    def _room_for_one(self) -> bool:
        return len(self._pending) < self.cap or self._victim() is not None

    def _take(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving an accepted socket, making room for it at the cap."""
        if len(self._pending) >= self.cap:
            self._evict(f"{self.cap} connections are waiting for their hello; this one longest")
        sock.setblocking(False)
        connection = Connection(self, sock, loop.time())
        self._pending[connection] = None
        connection._timer = loop.call_at(connection.accepted_at + self.limits.hello_timeout_s, connection.abort,
                                         f"no valid hello within {self.limits.hello_timeout_s:g}s")
        self.open_connections += 1
        loop.create_task(self._connection(connection, loop))

    def _victim(self) -> Connection | None:
        """The pending connection to close for a newcomer: the oldest that sent nothing for
        ``evict_silent_after_s``, or that has been pending ``evict_after_s``; None if none is."""
        now = asyncio.get_running_loop().time()
        for connection in self._pending:  # oldest first
            age = now - connection.accepted_at
            if age < self.limits.evict_silent_after_s:
                return None
            if age >= self.limits.evict_after_s or connection.silent():
                return connection
        return None

    def _evict(self, why: str) -> None:
        victim = self._victim()
        if victim is not None:
            self._release(victim)
            victim.abort(why)

    async def _wait_for_room(self) -> None:
        """Until a pending connection is admitted or gone, or ``evict_silent_after_s`` passed."""
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), max(self.limits.evict_silent_after_s, 0.001))

    def _accept_failed(self, error: OSError) -> None:
        """If descriptors ran out: lower the cap to leave ``FD_HEADROOM`` of them free and close
        victims down to it. Warn at most once per ``warn_interval_s``."""
        exhausted = error.errno in _OUT_OF_RESOURCES
        if exhausted:
            self.cap = min(self.cap, max(1, len(self._pending) - FD_HEADROOM))
            while len(self._pending) >= self.cap and self._victim() is not None:
                self._evict("the coordinator is out of file descriptors; this one waited longest for its hello")
        self._failures += 1
        now = time.monotonic()
        if now - self._warned_at < self.limits.warn_interval_s:
            return
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        more = f"; {self._failures - 1} more failed accepts since the last warning" if self._failures > 1 else ""
        hint = (f" (open-file limit {soft_limit}; raise it with `ulimit -n`; from now on at most {self.cap} "
                f"connections may wait for their hello, each for {self.limits.hello_timeout_s:g}s)") \
            if exhausted else ""
        logger.warning("the coordinator cannot accept connections: %s%s; %d open, %d without a hello; "
                       "retrying with back-off, next warning in %gs at the earliest%s", error, hint,
                       self.open_connections, self.pending, self.limits.warn_interval_s, more)
        self._warned_at = now
        self._failures = 0

    # ---------------------------------------------------------- connections
    async def _connection(self, connection: Connection, loop: asyncio.AbstractEventLoop) -> None:
        try:
            reader = asyncio.StreamReader(limit=self.limits.hello_line_bytes)
            protocol = _Protocol(reader, connection)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, connection.sock)
            connection.reader = reader
            connection.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            if connection._doomed:  # evicted or out of time while its streams were made
                transport.abort()
            else:
                await self._serve(connection)
        except OSError as e:  # the peer was gone before its streams were made
            logger.debug("connection of %s dropped while being accepted: %s", connection.peer, e)
            connection.sock.close()
        finally:
            self._release(connection)
            if connection.writer is not None:
                connection.writer.close()
            self.open_connections -= 1

    def _release(self, connection: Connection) -> None:
        """The connection no longer counts as pending (admitted or gone)."""
        if connection._timer is not None:
            connection._timer.cancel()
            connection._timer = None
        if connection in self._pending:
            del self._pending[connection]
            self._room.set()
