"""The websocket ``/api/v1/ws``: one broadcaster thread per app, coalesced updates to every socket.

Messages (JSON text; the contract in docs/api.md):

- server -> client ``{"kind": "hello", "mode": "live"|"replay", "seq": N}`` at connect, where
  ``seq`` counts the updates this app has built so far;
- server -> client ``{"kind": "update", "seq": N, "ts": T, "snapshot": {...}, "events": [...],
  "pages": {"PART/KIND?offset=O&limit=L": page}}``: the snapshot, the logged events since this
  socket's previous update (newest last, at most :data:`MAX_EVENTS`; ``"events_missed": K``
  when more came), each with its ``"level"`` as ``GET /api/v1/events`` gives it (so a page can
  show them as they come without reading the log again), and the pages this socket wants;
- server -> client ``{"kind": "error", "error": "...", "key": "..."}`` for a bad ``want``;
- client -> server ``{"want": {"pages": [{"part", "kind", "offset", "limit"}, ...]}}``, which
  replaces the socket's previous want and is answered by an update at the next tick.

How it scales: the source's listener (``ViewSource.subscribe``) only marks the broadcaster dirty
and queues the new events. The broadcaster thread wakes when dirty, at most once per
``interval_s`` (0.1 s), takes one snapshot and the union of the pages the sockets want (each
distinct page once), encodes each once, and hands every socket its update. A live source tells
its listeners of new logged events as soon as they are pushed, before it refreshes its
snapshot (monitor.sources), so the update that carries an event has the snapshot the source had
then (at most its staleness bound old; it does not wait for a status op) and a following update
has the refreshed one: ``events`` and ``snapshot`` are independent fields, and the snapshots a
socket gets never go back in time. A socket holds at
most one unsent update: a newer one replaces it and keeps the events of both (drop-to-latest),
so a slow browser gets fewer, fuller messages and never delays another socket or the
broadcaster; each socket is written by its own request thread. So a socket gets at most
``1 / interval_s`` messages a second whatever the job's size or event rate.

In replay nothing changes by itself: a socket gets hello and an update answering each want.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from monitor.errors import QueryError
from monitor.sentences import presented
from monitor.sources import ViewSource

logger = logging.getLogger(__name__)

__all__ = ["Broadcaster", "MAX_EVENTS", "PageWant", "WantError", "parse_want", "register_websocket"]

MAX_EVENTS = 200  # logged events one update carries at most
MAX_PAGES = 16  # pages one socket may want
MAX_PAGE_LIMIT = 1000
MAX_MESSAGE_BYTES = 64 * 1024  # what a client may send in one message
PING_INTERVAL_S = 25.0  # a browser gone without closing is dropped after about this long


class WantError(ValueError):
    """A ``want`` message that is not what the contract says; ``key`` names the bad field."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class PageWant:
    part: str
    kind: str
    offset: int = 0
    limit: int = 100

    @property
    def key(self) -> str:
        return f"{self.part}/{self.kind}?offset={self.offset}&limit={self.limit}"


def parse_want(text: str | bytes) -> tuple[PageWant, ...]:
    """The pages a client message asks for; :class:`WantError` naming the key if it is malformed."""
    try:
        message = json.loads(text)
    except ValueError as e:
        raise WantError(f"expected a JSON message: {e}", key="want") from None
    want = message.get("want") if isinstance(message, dict) else None
    if not isinstance(want, dict):
        raise WantError('expected {"want": {"pages": [...]}}', key="want")
    pages = want.get("pages", [])
    if not isinstance(pages, list) or len(pages) > MAX_PAGES:
        raise WantError(f"expected a list of at most {MAX_PAGES} pages", key="want.pages")
    return tuple(_page_want(page, i) for i, page in enumerate(pages))


def _page_want(page: object, i: int) -> PageWant:
    where = f"want.pages[{i}]"
    if not isinstance(page, dict):
        raise WantError("expected an object with part, kind, offset, limit", key=where)
    for name in ("part", "kind"):
        if not isinstance(page.get(name), str) or not page[name]:
            raise WantError(f"expected a non-empty string, got {page.get(name)!r}", key=f"{where}.{name}")
    offset, limit = page.get("offset", 0), page.get("limit", 100)
    if type(offset) is not int or offset < 0:
        raise WantError(f"expected an integer >= 0, got {offset!r}", key=f"{where}.offset")
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise WantError(f"expected an integer from 1 to {MAX_PAGE_LIMIT}, got {limit!r}", key=f"{where}.limit")
    return PageWant(page["part"], page["kind"], offset, limit)


class _Socket:
    """One websocket's side of the broadcaster: what it wants and its one unsent update."""

    def __init__(self) -> None:
        self.wants: tuple[PageWant, ...] = ()
        self.fresh = True  # needs an update even if the source has not changed
        self.closed = False
        self.sent = 0
        self._notices: list[str] = []  # messages sent before the next update (errors)
        self._pending: dict[str, Any] | None = None
        self._ready = threading.Condition()

    def offer(self, seq: int, ts: float, snapshot: str, events: list[dict[str, Any]], missed: int,
              pages: Mapping[str, str]) -> None:
        """Queue an update, merging it into the unsent one (drop-to-latest; the newest events of
        both kept, the others counted as missed)."""
        with self._ready:
            if self._pending is not None:
                events = self._pending["events"] + events
                missed += self._pending["missed"]
            if len(events) > MAX_EVENTS:
                missed += len(events) - MAX_EVENTS
                events = events[-MAX_EVENTS:]
            self._pending = {"seq": seq, "ts": ts, "snapshot": snapshot, "events": events, "missed": missed,
                             "pages": pages}
            self._ready.notify()

    def notify(self, message: str) -> None:
        """Queue ``message`` (already encoded) ahead of the next update."""
        with self._ready:
            self._notices.append(message)
            self._ready.notify()

    def take(self, timeout: float) -> list[str]:
        """The messages to send now (notices, then the unsent update encoded), waiting up to
        ``timeout`` for one; empty if none came or the socket is closed."""
        with self._ready:
            if self._pending is None and not self._notices and not self.closed:
                self._ready.wait(timeout)
            pending, self._pending = self._pending, None
            notices, self._notices = self._notices, []
        if self.closed:
            return []
        return notices + ([_encode_update(**pending)] if pending is not None else [])

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify()


def _encode_update(seq: int, ts: float, snapshot: str, events: list[dict[str, Any]], missed: int,
                   pages: Mapping[str, str]) -> str:
    head = {"kind": "update", "seq": seq, "ts": ts}
    parts = [json.dumps(head)[:-1], ', "snapshot": ', snapshot, ', "events": ', json.dumps(events, default=str)]
    if missed:
        parts.append(f', "events_missed": {missed}')
    parts.append(', "pages": {')
    parts.append(", ".join(f"{json.dumps(key)}: {page}" for key, page in pages.items()))
    parts.append("}}")
    return "".join(parts)


class Broadcaster:
    """One thread building coalesced updates from ``source`` for every connected socket."""

    def __init__(self, source: ViewSource, interval_s: float = 0.1) -> None:
        self.source = source
        self.interval_s = interval_s
        self.seq = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._changed = True  # the first update of the first socket takes a snapshot anyway
        self._events: list[dict[str, Any]] = []  # logged events since the last update (newest MAX_EVENTS)
        self._missed = 0  # ... and how many older ones were dropped
        self._sockets: set[_Socket] = set()
        self._closed = False
        self._failing = False
        self._unsubscribe = source.subscribe(self._on_change)
        self._thread = threading.Thread(target=self._run, name="torchrt-monitor-broadcast", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------- sockets
    def connect(self) -> _Socket:
        sock = _Socket()
        with self._lock:
            self._sockets.add(sock)
        return sock

    def want(self, sock: _Socket, wants: tuple[PageWant, ...]) -> None:
        with self._lock:
            sock.wants, sock.fresh = wants, True
            self._wake.notify()

    def disconnect(self, sock: _Socket) -> None:
        sock.close()
        with self._lock:
            self._sockets.discard(sock)

    @property
    def sockets(self) -> int:
        with self._lock:
            return len(self._sockets)

    def close(self) -> None:
        self._unsubscribe()
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
            self._wake.notify()
        for sock in sockets:
            sock.close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ thread
    def _on_change(self, events: list[dict[str, Any]]) -> None:
        """The source's listener (its thread): queue the events, wake the broadcaster."""
        shown = [presented(event) for event in events]
        with self._lock:
            self._on_change_locked(self._events + shown, 0)
            self._wake.notify()

    def _on_change_locked(self, events: list[dict[str, Any]], missed: int) -> None:
        """Hold ``events`` for the next update (the newest MAX_EVENTS; the others counted)."""
        dropped = max(0, len(events) - MAX_EVENTS)
        self._events = events[dropped:]
        self._missed += missed + dropped
        self._changed = True

    def _due(self) -> bool:
        return any(s.fresh for s in self._sockets) or (self._changed and bool(self._sockets))

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._lock:
                while not self._closed and not self._due():
                    self._wake.wait()
                if self._closed:
                    return
            wait = last + self.interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the rate cap: one update per interval at most
            with self._lock:
                changed, self._changed = self._changed, False
                events, self._events = self._events, []
                missed, self._missed = self._missed, 0
                # each socket's wants as of now: a want() from here on replaces them for the next
                # update (it marks the socket fresh), never this one's pages
                targets = [(s, s.wants) for s in self._sockets if changed or s.fresh]
                for sock, _ in targets:
                    sock.fresh = False
            if targets:
                try:
                    self._broadcast(targets, events, missed)
                except Exception:  # a bug in one update must not end every socket's updates
                    logger.exception("a monitor update failed; the next change is tried again")
            # counted from when the update was handed over: a read that waited (a snapshot past its
            # staleness bound waits for the source's refresh) does not bring the next one closer
            last = time.monotonic()

    def _broadcast(self, targets: list[tuple[_Socket, tuple[PageWant, ...]]], events: list[dict[str, Any]],
                   missed: int) -> None:
        try:
            snapshot = json.dumps(self.source.snapshot(), default=str)
            pages = {want.key: self._page(want) for want in {w for _, wants in targets for w in wants}}
        except Exception as e:  # a coordinator gone away: keep the sockets, say it once
            if not self._failing:
                logger.warning("monitor updates stopped: the view cannot be read: %s", e)
            self._failing = True
            with self._lock:  # try again at the next tick, with these events
                self._on_change_locked(events + self._events, missed)
                for sock, _ in targets:
                    sock.fresh = True
            time.sleep(self.interval_s)
            return
        if self._failing:
            logger.warning("monitor updates resumed")
            self._failing = False
        self.seq += 1
        now = time.time()
        for sock, wants in targets:
            sock.offer(self.seq, now, snapshot, events, missed, {w.key: pages[w.key] for w in wants})

    def _page(self, want: PageWant) -> str:
        try:
            page = self.source.page(want.part, want.kind, want.offset, want.limit)
        except QueryError as e:
            return json.dumps({"error": str(e), "key": e.key})
        return json.dumps(page, default=str)


def register_websocket(app: Flask, broadcaster: Broadcaster) -> None:
    """Serve ``/api/v1/ws`` on ``app`` from ``broadcaster``."""
    app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": MAX_MESSAGE_BYTES, "ping_interval": PING_INTERVAL_S}
    sock = Sock(app)

    @sock.route("/api/v1/ws")
    def websocket(ws: Any) -> None:
        client = broadcaster.connect()
        reader = threading.Thread(target=_read_wants, args=(ws, broadcaster, client),
                                  name="torchrt-monitor-ws-read", daemon=True)
        try:
            ws.send(json.dumps({"kind": "hello", "mode": broadcaster.source.mode, "seq": broadcaster.seq}))
            reader.start()
            while not client.closed and ws.connected:
                for message in client.take(timeout=1.0):
                    ws.send(message)
                    client.sent += 1
        finally:
            broadcaster.disconnect(client)


def _read_wants(ws: Any, broadcaster: Broadcaster, client: _Socket) -> None:
    try:
        while True:
            text = ws.receive()
            if text is None:
                continue
            try:
                broadcaster.want(client, parse_want(text))
            except WantError as e:
                client.notify(json.dumps({"kind": "error", "error": str(e), "key": e.key}))
    except ConnectionClosed:
        pass
    finally:
        broadcaster.disconnect(client)
