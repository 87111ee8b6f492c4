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
* **Cap, in two tiers.** Up to ``max_pending`` connections may be pending with the full
  deadline: by default 1,024 (a thousand nodes may dial at once, each pending until its hello
  is read), but at most half the soft open-file limit, so that pending connections alone cannot
  take every descriptor (512 under ``ulimit -n 1024``). While that many are pending, up to
  ``max_crowded`` more (a quarter as many) are accepted *crowded*: with a deadline of
  ``crowded_hello_timeout_s`` (0.5 s). Beyond both, accepting pauses and newcomers wait in the
  kernel's listen backlog, which costs the coordinator no descriptor.

  Why not "beyond the cap, close the newcomer": whoever keeps the slots full would lock every
  real node out (and a node whose connection closes before its hello is answered fails its
  agent). Why not "close the oldest for the newcomer": idle connections that are re-opened as
  soon as they are closed then evict each other in a loop as fast as the CPU allows (measured:
  3,000 evictions per second, the coordinator at 86 % of a core, formation 5x slower). With
  the crowded tier a real node is taken at once while there is crowded room, says its hello in
  milliseconds and is in; an idle connection there costs at most 0.5 s of a slot, so churn is
  bounded by ``max_crowded / crowded_hello_timeout_s``; and when even that is full, a real node
  waits in the backlog for at most about ``crowded_hello_timeout_s`` per ``max_crowded``
  connections ahead of it.

**A refused connection waits, then lingers.** One that is refused before its hello (not JSON, a
line too long, a bad hello: :meth:`Connection.refuse`) gets its error reply only
``refusal_delay_s`` (0.5 s) later (not at all if its deadline comes first), then keeps its slot, read no further (what it sends is
discarded, up to ``hello_line_bytes``), until its deadline, unless its peer leaves first. A
client that retries junk as soon as it is closed gets one try per deadline, and one that leaves
as soon as it is answered one per ``refusal_delay_s``, instead of thousands per second of the
coordinator's loop (measured: 3,000 junk connections per second from 100 clients kept the
coordinator at 70 % of a core and doubled formation; answered at once, 100 clients that left on
the answer still made 2,000 a second and formation 2-3x slower on a loaded machine). A real
client that is refused (a wrong token, another torchrt version) reads its reply half a second
later and leaves by itself; a hello that is accepted is answered at once, as is anything an
admitted connection sends, however wrong.

**Our own accept loop, not** ``asyncio.start_server``. On a full file table (``EMFILE``) Python's
selector loop reports the error through the loop's exception handler *for every entry of its
accept batch* (``backlog`` of them, 4,096 here) and schedules as many retries: measured with
1,100 idle connections under ``ulimit -n 1024``, 3-4 MB of identical tracebacks per second,
and the job locked out because nothing ever freed a descriptor. A rate-limiting exception
handler would only hide the spinning. :class:`Admission` accepts itself (``loop.sock_accept``,
then a short synchronous drain of what is already queued), and on ``EMFILE``, ``ENFILE``,
``ENOBUFS`` or ``ENOMEM`` lowers both caps so that ``FD_HEADROOM`` (64) descriptors stay free for
files, the store and real nodes, closes the oldest pending connections down to the new caps
(a real node is pending for milliseconds, so the oldest are idle), backs off (10 ms doubling to
1 s, reset by the next success) and warns at most once per ``warn_interval_s`` with what it
suppressed. The deadlines free the rest.

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

from torchrt.errors import ProtocolError
from torchrt.protocol import HELLO_LINE_BYTES, MAX_LINE_BYTES
from torchrt.validation import Integer, Number, check_fields, mismatch, setting

__all__ = ["Admission", "AdmissionLimits", "Connection", "LineTooLongError", "read_line"]

logger = logging.getLogger(__name__)

ACCEPT_BACKOFF_S = (0.01, 1.0)  # first and longest wait after an accept that failed
ACCEPT_BURST = 64  # connections accepted back to back before the loop serves the others
DEFAULT_MAX_PENDING = 1024  # a thousand nodes may dial at once, each pending until its hello is read
FD_HEADROOM = 64  # descriptors kept free for files, the store and real nodes once the limit was hit
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclasses.dataclass(frozen=True)
class AdmissionLimits:
    """How the control port treats connections before and after their hello (see the module)."""

    hello_timeout_s: float = setting(5.0, Number(gt=0))
    crowded_hello_timeout_s: float = setting(0.5, Number(gt=0))
    refusal_delay_s: float = setting(0.5, Number(ge=0))
    hello_line_bytes: int = setting(HELLO_LINE_BYTES, Integer(ge=1))
    line_bytes: int = setting(MAX_LINE_BYTES, Integer(ge=1))
    max_pending: int | None = setting(None, Integer(ge=1, optional=True))  # None: see caps()
    max_crowded: int | None = setting(None, Integer(ge=0, optional=True))  # None: see caps()
    max_output_bytes: int = setting(8 * 1024 * 1024, Integer(ge=1))
    warn_interval_s: float = setting(30.0, Number(gt=0))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.hello_line_bytes > self.line_bytes:
            raise mismatch("hello_line_bytes", f"an integer <= line_bytes ({self.line_bytes})", self.hello_line_bytes)
        if self.crowded_hello_timeout_s > self.hello_timeout_s:
            raise mismatch("crowded_hello_timeout_s", f"a number <= hello_timeout_s ({self.hello_timeout_s:g})",
                           self.crowded_hello_timeout_s)

    def caps(self) -> tuple[int, int]:
        """``(max_pending, max_crowded)``; by default 1,024 but at most half the soft open-file
        limit, and a quarter of that (see the module)."""
        pending = self.max_pending
        if pending is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            pending = DEFAULT_MAX_PENDING if soft == resource.RLIM_INFINITY else \
                max(1, min(DEFAULT_MAX_PENDING, soft // 2))
        return pending, max(1, pending // 4) if self.max_crowded is None else self.max_crowded


class LineTooLongError(ProtocolError):
    """A peer sent a line longer than its connection may (before or after its hello)."""


async def read_line(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The next line with its newline; ``b""`` at the end of the stream (a torn last line is
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

    __slots__ = ("peer", "accepted_at", "admitted", "reader", "writer", "_admission", "_timer", "_doomed",
                 "_lingering", "_ended")

    def __init__(self, admission: Admission, peer: str, accepted_at: float) -> None:
        self._admission = admission
        self.peer = peer
        self.accepted_at = accepted_at
        self.admitted = False
        self.reader: asyncio.StreamReader | None = None  # set once its streams are made
        self.writer: asyncio.StreamWriter | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._doomed = False  # aborted before its streams were made
        self._lingering = False  # refused before its hello: held until its deadline
        self._ended = asyncio.Event()

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

    def refuse(self, data: bytes) -> None:
        """End the connection with ``data``, its error reply: an admitted one now; one that has
        not said a valid hello gets it ``refusal_delay_s`` from now and is held until its
        deadline (see the module). Returns at once."""
        delay = 0.0 if self.admitted else self.limits.refusal_delay_s
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.send, data)
        else:
            self.send(data)
        self.close()

    def is_closing(self) -> bool:
        return self._lingering or self.writer is None or self.writer.is_closing()

    def close(self) -> None:
        """End the connection once what was sent is flushed. A connection refused before its hello
        is held until its deadline instead, unless its peer leaves first (see the module)."""
        if self.writer is None:
            self._doomed = True
        elif self.admitted or self._admission.closed or self.reader is None or self.reader.at_eof():
            self.writer.close()
        else:
            self._lingering = True

    def abort(self, why: str) -> None:
        """Close at once, dropping whatever is unsent."""
        logger.debug("closing the connection of %s: %s", self.peer, why)
        self._ended.set()
        if self.writer is None:
            self._doomed = True
        elif not self.writer.transport.is_closing():
            self.writer.transport.abort()

    async def _linger(self) -> None:
        """Until the deadline or the peer leaves, discarding up to ``hello_line_bytes`` it sends."""
        assert self.reader is not None
        budget = self.limits.hello_line_bytes
        while budget > 0 and not self._ended.is_set():
            data = await self.reader.read(budget)
            if not data:
                return
            budget -= len(data)
        await self._ended.wait()


class Admission:
    """Accepts connections on a listening socket and hands each to ``serve`` (see the module).

    ``serve(connection)`` runs for as long as the connection should live; it calls
    :meth:`Connection.admit` once the connection said a valid hello.
    """

    def __init__(self, sock: socket.socket, serve: Callable[[Connection], Awaitable[None]],
                 limits: AdmissionLimits) -> None:
        self.limits = limits
        self.max_pending, self.max_crowded = limits.caps()
        self._sock = sock
        self._serve = serve
        self._pending: collections.OrderedDict[Connection, None] = collections.OrderedDict()  # oldest first
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0  # accept failures not warned about yet
        self._warned_at = -math.inf
        self.open_connections = 0
        self.closed = False

    @property
    def pending(self) -> int:
        """Connections accepted that have not said a valid hello yet (crowded ones included)."""
        return len(self._pending)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sock.setblocking(False)
        self._task = loop.create_task(self._accept_forever(), name="torchrt-accept")

    def close(self) -> None:
        """Stop accepting, close the listening socket and every connection without a hello (the
        others are the caller's)."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
        self._sock.close()
        for connection in list(self._pending):
            connection.abort("the coordinator stops")

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------ accepting
    def _full(self) -> bool:
        return len(self._pending) >= self.max_pending + self.max_crowded

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = ACCEPT_BACKOFF_S[0]
        while True:
            if self._full():
                self._room.clear()
                await self._room.wait()
                continue
            try:
                sock, address = await loop.sock_accept(self._sock)
            except ConnectionAbortedError:  # a peer gave up while queued
                continue
            except OSError as e:
                self._accept_failed(e)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, ACCEPT_BACKOFF_S[1])
                continue
            backoff = ACCEPT_BACKOFF_S[0]
            self._take(sock, address, loop)
            for _ in range(ACCEPT_BURST - 1):  # what else is queued already, without a loop iteration each
                if self._full():
                    break
                try:
                    sock, address = self._sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    break
                except OSError as e:
                    self._accept_failed(e)
                    break
                self._take(sock, address, loop)
            await asyncio.sleep(0)  # let the accepted connections say their hello

    def _take(self, sock: socket.socket, address: object, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving an accepted socket, with the deadline of its tier."""
        sock.setblocking(False)
        connection = Connection(self, str(address), loop.time())
        crowded = len(self._pending) >= self.max_pending
        timeout = self.limits.crowded_hello_timeout_s if crowded else self.limits.hello_timeout_s
        self._pending[connection] = None
        connection._timer = loop.call_at(
            connection.accepted_at + timeout, connection.abort,
            f"no valid hello within {timeout:g}s{' (accepted while crowded)' if crowded else ''}")
        self.open_connections += 1
        loop.create_task(self._connection(connection, sock))

    def _accept_failed(self, error: OSError) -> None:
        """If descriptors ran out: lower the caps to keep ``FD_HEADROOM`` of them free and close the
        oldest pending connections down to them. Warn at most once per ``warn_interval_s``."""
        exhausted = error.errno in _OUT_OF_RESOURCES
        if exhausted:
            total = min(self.max_pending + self.max_crowded, max(2, len(self._pending) - FD_HEADROOM))
            self.max_crowded = max(1, total // 5)
            self.max_pending = total - self.max_crowded
            while len(self._pending) > total:
                oldest = next(iter(self._pending))
                self._release(oldest)
                oldest.abort("the coordinator is out of file descriptors; this one waited longest for its hello")
        self._failures += 1
        now = time.monotonic()
        if now - self._warned_at < self.limits.warn_interval_s:
            return
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        more = f"; {self._failures - 1} more failed accepts since the last warning" if self._failures > 1 else ""
        hint = (f" (open-file limit {soft_limit}; raise it with `ulimit -n`; from now on at most "
                f"{self.max_pending + self.max_crowded} connections may wait for their hello)") if exhausted else ""
        logger.warning("the coordinator cannot accept connections: %s%s; %d open, %d without a hello; "
                       "retrying with back-off, next warning in %gs at the earliest%s", error, hint,
                       self.open_connections, self.pending, self.limits.warn_interval_s, more)
        self._warned_at = now
        self._failures = 0

    # ---------------------------------------------------------- connections
    async def _connection(self, connection: Connection, sock: socket.socket) -> None:
        try:
            connection.reader, connection.writer = await asyncio.open_connection(
                sock=sock, limit=self.limits.hello_line_bytes)
            if connection._doomed:  # out of time or evicted while its streams were made
                connection.writer.transport.abort()
            else:
                await self._serve(connection)
                if connection._lingering:
                    await connection._linger()
        except OSError as e:  # the peer was gone before its streams were made
            logger.debug("connection of %s dropped while being accepted: %s", connection.peer, e)
            sock.close()
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
