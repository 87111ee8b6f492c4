"""The monitor's live source: a running coordinator, seen through the control protocol.

:class:`LiveSource` is a client of the coordinator. An *observer* connection asks the ``status``
op for the snapshot, pages and series points, and is subscribed to the event stream (``subscribe``:
logged events, and the live-only reports: steps, node samples, metrics, previews). One status op
is in flight at a time and a new one is sent no sooner than :data:`CACHE_S` (100 ms) after the
last, so a thousand API requests a second cost the coordinator about ten status ops a second.

Freshness, stale-while-revalidate: the snapshot (and a page the source keeps) is served from the
cache, without waiting, while it is younger than :data:`CACHE_S`; up to :data:`MAX_STALE_S`
(250 ms) it is still served at once while a refresh runs in the background; older than that a
reader waits for the refresh. Ages count from when the status op was *sent*, so what a reader
gets shows the coordinator's view as of at most :data:`MAX_STALE_S` ago, whatever the op's own
duration. (While the coordinator is away, ``connected`` False, the last snapshot is served as it
is; a coordinator that does not answer in time leaves the last one too.)

Two threads of the source's own: the *refresher* refetches the snapshot and the pages asked for
lately after a change (a pushed event or report) or a reader's ask, no sooner than CACHE_S after
the last fetch, and reconnects with backoff when the connection drops; the *teller* calls the
listeners (:meth:`subscribe`): with the new logged events as soon as they are pushed (the events
come in the push: no status op in between), and with ``[]`` once a refresh after a change is in.
So a listener gets an event at once, reading the snapshot then gives the one cached (at most
MAX_STALE_S old unless a refresh is late), and the fresh one follows with the next call; the
snapshot a reader gets never goes back in time. Stack dumps are asked over an *operator*
connection (with the job's token when it has one).

What the answers share with a replay (secrets left out, dumps grouped) is in :mod:`monitor.sources`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchrt.contract import STACK_DUMP_TIMEOUT_S, Op, Push, Role
from torchrt.coordinator.client import CoordinatorClient
from torchrt.coordinator.run_dir import EVENTS_FILE
from torchrt.coordinator.stacks import MAX_TIMEOUT_S, STACKS_DIR
from torchrt.errors import ProtocolError, TorchrtError

from monitor.errors import NotFoundError, QueryError
from monitor.logs import EventIndex, EventQuery
from monitor.sources import (Listener, RunRecord, check_level, grouped_dump, not_replay, public,
                             read_dump, versions)

__all__ = ["CACHE_S", "LiveSource", "MAX_STALE_S"]

logger = logging.getLogger(__name__)

CACHE_S = 0.1          # a live answer younger than this is reused without a refresh
MAX_STALE_S = 0.25     # ... older than this, a reader waits for the refresh (stale-while-revalidate)
RECENT_PAGES = 32      # pages the live source keeps fresh (the ones asked for lately)
PAGE_KEEP_S = 2.0      # ... asked within this many seconds
MAX_DUMPS_KEPT = 16    # dumps taken through a live source without a readable run directory
MAX_BACKOFF_S = 5.0


class LiveSource(RunRecord):
    """The view of a running coordinator (see the module docstring)."""

    mode = "live"

    def __init__(self, endpoint: str, token: str | None = None, run_dir: Path | str | None = None, *,
                 connect_timeout: float = 10.0, max_stale_s: float = MAX_STALE_S) -> None:
        if not max_stale_s >= CACHE_S:
            raise ValueError(f"max_stale_s: expected seconds >= CACHE_S ({CACHE_S:g}), got {max_stale_s!r}")
        self.endpoint = endpoint
        self.max_stale_s = max_stale_s
        self._token = token
        self._lock = threading.Lock()        # the caches, listeners and state below
        self._fetching = threading.Lock()    # one status op in flight (taken before _lock, never inside)
        self._wake = threading.Condition(self._lock)   # the refresher: a change, an ask, lost, closed
        self._tell = threading.Condition(self._lock)   # the teller: new events, a refresh in, closed
        self._listeners: list[Listener] = []
        self._new_events: list[dict[str, Any]] = []
        self._changed = False    # pushed since the last refresh began
        self._wanted = False     # a reader found the cache older than CACHE_S
        self._refreshed = False  # a refresh after a change is in: tell the listeners
        self._lost = False
        self._closed = False
        self._sent_at = float("-inf")  # monotonic: when the status op of the cached snapshot was sent
        self._snapshot: dict[str, Any] = {}
        self._pages: dict[tuple[str, str, int, int], tuple[float, dict[str, Any]]] = {}
        self._asked: OrderedDict[tuple[str, str], tuple[int, int, float]] = OrderedDict()
        self._points: dict[tuple[str, str, str, int], tuple[float, dict[str, Any]]] = {}
        self._dumps: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._pending_pushes: list[dict[str, Any]] | None = None  # while subscribing
        self._client = self._connect(connect_timeout)
        welcome = self._client.welcome
        self.run_dir = Path(run_dir) if run_dir is not None else self._readable(welcome.get("run_dir"))
        self.log = EventIndex(self.run_dir)
        try:
            self._subscribe()
            with self._fetching:
                self._fetch([])
        except BaseException:
            self._client.close()
            raise
        self._threads = [threading.Thread(target=self._run, name="torchrt-monitor-source", daemon=True),
                         threading.Thread(target=self._run_teller, name="torchrt-monitor-source-tell", daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def connected(self) -> bool:
        return not self._lost and not self._closed

    # ------------------------------------------------------ the connection
    def _connect(self, timeout: float) -> CoordinatorClient:
        client = CoordinatorClient(self.endpoint, role=Role.OBSERVER, token=self._token, on_push=self._on_push)
        client.connect(timeout=timeout)
        return client

    @staticmethod
    def _readable(run_dir: object) -> Path | None:
        """The coordinator's run directory when its event log can be read from here."""
        if not isinstance(run_dir, str) or not run_dir:
            return None
        path = Path(run_dir)
        try:
            with open(path / EVENTS_FILE, "rb"):
                return path
        except OSError:
            return None

    def _subscribe(self) -> None:
        """Subscribe; pushes that overtake the reply wait in ``_new_events`` and go in after it."""
        with self._lock:
            self._pending_pushes = []
        reply = self._client.request(Op.SUBSCRIBE, since=self.log.last_seq(), timeout=30)
        with self._lock:
            pushed, self._pending_pushes = self._pending_pushes or [], None
        self.log.add(reply.get("events") or [])
        self.log.add(pushed)

    def _on_push(self, message: dict[str, Any]) -> None:
        """On the client's reader thread: note the change and the event; the source's threads do
        the rest (each woken only when it has something new to do)."""
        kind = message.get("push")
        with self._lock:
            if kind == Push.LOST:
                self._lost = True
                self._wake.notify()
            elif kind == Push.EVENT and isinstance(message.get("event"), dict):
                event = message["event"]
                if self._pending_pushes is not None:
                    self._pending_pushes.append(event)
                else:
                    self.log.add([event])
                if not self._new_events:
                    self._tell.notify()
                self._new_events.append(event)
            if not self._changed:
                self._changed = True
                self._wake.notify()

    def _run(self) -> None:
        """The refresher: after a change or a reader's ask, refetch (no sooner than CACHE_S after
        the last fetch); after a change, have the teller tell the listeners. Reconnect when the
        connection is lost."""
        backoff = 0.2
        while True:
            with self._lock:
                while not self._closed and not self._lost:
                    if self._changed or self._wanted:
                        due = self._sent_at + CACHE_S - time.monotonic()
                        if due <= 0:
                            break
                        self._wake.wait(due)
                    else:
                        self._wake.wait()
                if self._closed:
                    return
                lost = self._lost
                changed, self._changed, self._wanted = self._changed, False, False
                taken = time.monotonic()
                asked = [(part, kind, offset, limit) for (part, kind), (offset, limit, when) in self._asked.items()
                         if taken - when < PAGE_KEEP_S]
            if lost:
                if self._reconnect():
                    backoff = 0.2
                else:
                    with self._lock:
                        self._wake.wait(backoff)  # close() ends it early
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            try:
                with self._fetching:
                    if asked or self._sent_at < taken:  # a reader's fetch begun since already shows it
                        self._fetch(asked)
            except TorchrtError as e:
                logger.debug("monitor: refresh from %s failed: %s", self.endpoint, e)
            if changed:
                with self._lock:
                    self._refreshed = True
                    self._tell.notify()

    def _run_teller(self) -> None:
        """The teller: the listeners get new logged events as soon as they are pushed, and ``[]``
        once a refresh after a change is in (one call when both are pending)."""
        while True:
            with self._lock:
                while not (self._new_events or self._refreshed or self._closed):
                    self._tell.wait()
                if self._closed:
                    return
                events, self._new_events = self._new_events, []
                self._refreshed = False
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(events)
                except Exception:  # noqa: BLE001 - one listener must not stop the others
                    logger.exception("monitor: a listener of the live source failed")

    def _reconnect(self) -> bool:
        try:
            client = self._connect(timeout=2.0)
        except TorchrtError:
            return False
        old, self._client = self._client, client
        old.close()
        with self._lock:
            self._lost = False
        try:
            self._subscribe()
        except TorchrtError:
            return False
        with self._lock:
            self._changed = True  # the refresher's next turn refetches and tells
        logger.info("monitor: reconnected to the coordinator at %s", self.endpoint)
        return True

    # ---------------------------------------------------------- fetching
    def _fetch(self, pages: list[tuple[str, str, int, int]]) -> None:
        """One status op (the caller holds ``_fetching``): the snapshot and ``pages`` (one per
        part/kind), cached with the time the op was sent."""
        sent = time.monotonic()
        reply = self._client.request(Op.STATUS, events=1, timeout=10, pages=[
            {"part": p, "kind": k, "offset": o, "limit": n} for p, k, o, n in pages])
        with self._lock:
            self._sent_at = sent
            self._snapshot = reply["state"]
            for part, kind, offset, limit in pages:
                self._pages[(part, kind, offset, limit)] = (sent, reply["pages"][f"{part}/{kind}"])
            self._trim(self._pages)

    def _ask_refresh(self) -> None:
        """A reader found the cache older than CACHE_S: the refresher refetches now."""
        if not self._wanted:
            with self._lock:
                if not self._wanted:
                    self._wanted = True
                    self._wake.notify()

    @staticmethod
    def _trim(cache: dict[Any, tuple[float, Any]]) -> None:
        if len(cache) > 4 * RECENT_PAGES:
            for key in sorted(cache, key=lambda k: cache[k][0])[:len(cache) - RECENT_PAGES]:
                del cache[key]

    def _fresh(self, cache: dict[Any, tuple[float, Any]], key: Any, kept: bool = False) -> Any:
        """The cached answer under ``key`` if it is younger than CACHE_S, else None; one the
        refresher keeps (``kept``) also up to ``max_stale_s``, asking for a refresh."""
        with self._lock:
            found = cache.get(key)
        if found is None:
            return None
        age = time.monotonic() - found[0]
        if age < CACHE_S:
            return found[1]
        if kept and age < self.max_stale_s and self.connected:
            self._ask_refresh()
            return found[1]
        return None

    def _status(self, **ask: Any) -> dict[str, Any]:
        """A status op of its own (a page or series the cache does not hold). The coordinator
        refuses a query of something its view does not have as a protocol error: NotFoundError."""
        try:
            return self._client.request(Op.STATUS, events=1, timeout=10, **ask)
        except ProtocolError as e:
            raise NotFoundError(str(e)) from None

    # -------------------------------------------------------------- reads
    def snapshot(self, at: float | None = None) -> dict[str, Any]:
        """The coordinator's snapshot as of at most ``max_stale_s`` ago (module docstring): at
        once while the cached one is that young, else after the refresh in flight (or one of
        its own). The same object until a refresh replaces it."""
        not_replay(at)
        age = time.monotonic() - self._sent_at
        if age < CACHE_S or not self.connected:
            return self._snapshot
        if age < self.max_stale_s:
            self._ask_refresh()
            return self._snapshot
        try:
            with self._fetching:  # whoever waited here for the refresh in flight finds it in
                if time.monotonic() - self._sent_at >= self.max_stale_s:
                    self._fetch([])
        except TorchrtError as e:
            logger.debug("monitor: status from %s failed: %s", self.endpoint, e)
        return self._snapshot

    def page(self, part: str, kind: str, offset: int = 0, limit: int = 100, at: float | None = None) -> dict[str, Any]:
        not_replay(at)
        key = (part, kind, offset, limit)
        with self._lock:
            self._asked[(part, kind)] = (offset, limit, time.monotonic())
            self._asked.move_to_end((part, kind))
            while len(self._asked) > RECENT_PAGES:
                self._asked.popitem(last=False)
        cached = self._fresh(self._pages, key, kept=True)  # asked: the refresher keeps it
        if cached is not None:
            return cached
        sent = time.monotonic()
        found = self._status(pages=[{"part": part, "kind": kind, "offset": offset, "limit": limit}])
        result = found["pages"][f"{part}/{kind}"]
        with self._lock:
            self._pages[key] = (sent, result)
            self._trim(self._pages)
        return result

    def points(self, part: str, subject: str, measure: str = "", level: int = 0,
               at: float | None = None) -> dict[str, Any]:
        not_replay(at)
        check_level(level)
        key = (part, subject, measure, level)
        cached = self._fresh(self._points, key)
        if cached is not None:
            return cached
        sent = time.monotonic()
        result = self._status(points=[{"part": part, "subject": subject, "measure": measure, "level": level}])
        with self._lock:
            self._points[key] = (sent, result["points"][0])
            self._trim(self._points)
        return result["points"][0]

    def stack_dump(self, request: int) -> dict[str, Any]:
        dump = read_dump(self.run_dir, request)
        if dump is None:
            with self._lock:
                dump = self._dumps.get(request)
        if dump is None:
            raise NotFoundError(f"no stack dump {request} in this run" + ("" if self.run_dir else
                                " (its run directory cannot be read from here: only dumps taken by this monitor)"))
        return grouped_dump(dump, f"{STACKS_DIR}/{request}.json")

    def take_stacks(self, rank: int | None, timeout_s: float = STACK_DUMP_TIMEOUT_S) -> dict[str, Any]:
        """One dump of ``rank`` (None: every rank), as the operator ``torchrt stacks`` is."""
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise QueryError(f"expected an integer >= 0 or null, got {rank!r}", key="rank",
                             expected="an integer >= 0 or null", got=rank)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise QueryError(f"expected seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout_s!r}", key="timeout_s",
                             expected=f"(0, {MAX_TIMEOUT_S:g}]", got=timeout_s)
        client = CoordinatorClient(self.endpoint, role=Role.OPERATOR, token=self._token)
        try:
            client.connect(timeout=5.0)
            reply = client.request(Op.DUMP_STACKS, rank=rank, timeout_s=timeout_s, timeout=timeout_s + 10.0)
        finally:
            client.close()
        request = int(reply["request"])
        dump = reply.get("dump") or read_dump(self.run_dir, request)
        if dump is None:  # too large for a reply and not readable here
            return {"request": request, "path": reply.get("path"), "summary": reply.get("summary"), "groups": []}
        with self._lock:
            self._dumps[request] = dump
            while len(self._dumps) > MAX_DUMPS_KEPT:
                self._dumps.popitem(last=False)
        return grouped_dump(dump, reply.get("path"))

    def settings(self) -> dict[str, Any]:
        state = self.snapshot()
        run = state.get("run") or {}
        try:
            ping = self._client.request(Op.PING, timeout=5)
            coordinator_versions = {"torch": ping.get("torch"), "protocol": ping.get("version")}
        except TorchrtError:
            coordinator_versions = None
        return public({"mode": self.mode, "endpoint": self.endpoint, "connected": self.connected,
                       "run_id": run.get("run_id"), "run_dir": (state.get("coordinator") or {}).get("run_dir"),
                       "run_dir_readable": self.run_dir is not None, "tensorboard_dir": state.get("tensorboard"),
                       "versions": {**versions(), "coordinator": coordinator_versions},
                       "config": {"job": run.get("settings"), "coordinator": state.get("coordinator")}})

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
            self._tell.notify()
        self._client.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
