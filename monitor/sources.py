"""Where the monitor's data comes from: a running coordinator, or a finished run directory.

The monitor adds no second source of truth: both sources serve the job view
(:mod:`torchrt.view`) as its owner built it, through one :class:`ViewSource` protocol that the API
(monitor.api), the websocket broadcaster (monitor.live) and the Prometheus collector use alike.

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

:class:`ReplaySource` reads a run directory alone: the view is ``JobView.replay`` (its series from
``series/``). ``at=`` (the time slider) shows the view as of that time: a second view folds the
events with ``ts <= at``, kept with a cursor so that moving forward folds only the events in
between (moving back starts again), and series points are cut to the buckets that ended by ``at``. Previews are live
only (docs/view.md): a replay has none, and says so.

Both read the run's event log through :class:`monitor.logs.EventIndex` and its stack dumps
from ``RUN_DIR/stacks/<N>.json``, a path built from an integer only.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

import torchrt
from torchrt.contract import STACK_DUMP_TIMEOUT_S, EventType, Op, Push, Role
from torchrt.coordinator.client import CoordinatorClient
from torchrt.coordinator.run_dir import EVENTS_FILE, STATE_FILE, read_events
from torchrt.coordinator.stacks import MAX_TIMEOUT_S, STACKS_DIR
from torchrt.errors import ProtocolError, TorchrtError
from torchrt.view.fold import ViewQueryError
from torchrt.view.job import JobView
from torchrt.view.series import LEVELS, series_name
from torchrt.view.stacks import StackDumpError, group_stacks, render, summary

from monitor.errors import NotFoundError, NotLiveError, QueryError
from monitor.logs import EventIndex, EventQuery

__all__ = ["CACHE_S", "MAX_STALE_S", "LiveSource", "NotFoundError", "NotLiveError", "QueryError", "ReplaySource",
           "ViewSource", "public"]

logger = logging.getLogger(__name__)

CACHE_S = 0.1          # a live answer younger than this is reused without a refresh
MAX_STALE_S = 0.25     # ... older than this, a reader waits for the refresh (stale-while-revalidate)
RECENT_PAGES = 32      # pages the live source keeps fresh (the ones asked for lately)
PAGE_KEEP_S = 2.0      # ... asked within this many seconds
MAX_DUMPS_KEPT = 16    # dumps taken through a live source without a readable run directory
MAX_BACKOFF_S = 5.0
SECRET = re.compile(r"token|secret|passw|credential|api_?key|private", re.IGNORECASE)
Listener = Callable[[list[dict[str, Any]]], None]


class ViewSource(Protocol):
    """What the monitor reads (see docs/api.md for the shapes)."""

    mode: str

    def snapshot(self, at: float | None = None) -> dict[str, Any]: ...
    def page(self, part: str, kind: str, offset: int = 0, limit: int = 100,
             at: float | None = None) -> dict[str, Any]: ...
    def points(self, part: str, subject: str, measure: str = "", level: int = 0,
               at: float | None = None) -> dict[str, Any]: ...
    def events(self, query: EventQuery) -> dict[str, Any]: ...
    def span(self) -> tuple[float | None, float | None]: ...
    def stacks(self) -> list[dict[str, Any]]: ...
    def stack_dump(self, request: int) -> dict[str, Any]: ...
    def take_stacks(self, rank: int | None, timeout_s: float = STACK_DUMP_TIMEOUT_S) -> dict[str, Any]: ...
    def settings(self) -> dict[str, Any]: ...
    def subscribe(self, listener: Listener) -> Callable[[], None]: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------ shared
def public(value: Any) -> Any:
    """``value`` without any key that looks like a secret (token, secret, password, ...); a
    boolean under such a key (``token_required``) says only whether there is one, and stays."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not SECRET.search(str(k)) or isinstance(v, bool)}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


def grouped_dump(dump: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """A dump (``RUN_DIR/stacks/<N>.json`` or a ``dump_stacks`` reply's) as the Stacks page shows
    it: identical stacks grouped with the ranks that share them (:mod:`torchrt.view.stacks`)."""
    try:
        groups = group_stacks(dump.get("ranks") or {})
        text = render(dump)
    except StackDumpError as e:
        raise NotFoundError(f"stack dump {dump.get('request')}: not readable ({e})") from None
    return {"request": dump.get("request"), "ts": dump.get("ts"), "reason": dump.get("reason"),
            "timeout_s": dump.get("timeout_s"), "path": path, "ranks": len(dump.get("ranks") or {}),
            "summary": summary(groups), "text": text,
            "groups": [{"answer": g.answer.value, "ranks": list(g.ranks), "where": g.where, "detail": g.detail,
                        "threads": list(g.threads),
                        "collectives": [{"collective": c, "ranks": list(r)} for c, r in g.collectives]}
                       for g in groups]}


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "torchrt": torchrt.__version__, "python": sys.version.split()[0]}


def _listed(log: EventIndex) -> list[dict[str, Any]]:
    """The run's stack dumps, newest first: their ``stacks_dumped`` events."""
    found = log.query(EventQuery(types=frozenset({EventType.STACKS_DUMPED.value}), limit=500))["items"]
    return [{k: e.get(k) for k in ("request", "ts", "reason", "ranks", "answered", "missing", "slowest_s", "path")}
            for e in found]


def _read_dump(run_dir: Path | None, request: int) -> dict[str, Any] | None:
    """``RUN_DIR/stacks/<request>.json`` (the path is built from an int only), or None."""
    if run_dir is None or isinstance(request, bool) or not isinstance(request, int) or request < 1:
        return None
    try:
        return json.loads((run_dir / STACKS_DIR / f"{request:d}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _view_query(call: Callable[[], Any]) -> Any:
    """A query of a page or series the view does not have: NotFoundError (404)."""
    try:
        return call()
    except ViewQueryError as e:
        raise NotFoundError(str(e)) from None


def _check_level(level: int) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(LEVELS):
        raise QueryError(f"expected a level in 0..{len(LEVELS) - 1}, got {level!r}", key="level",
                         expected=f"0..{len(LEVELS) - 1}", got=level)


def _not_replay(at: float | None) -> None:
    if at is not None:
        raise QueryError("the time slider is for a replayed run; a live job shows now", key="at",
                         expected="no 'at' in live mode", got=at)


# ------------------------------------------------------------------ live
class LiveSource:
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
        _not_replay(at)
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
        _not_replay(at)
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
        _not_replay(at)
        _check_level(level)
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

    def events(self, query: EventQuery) -> dict[str, Any]:
        return self.log.query(query)

    def span(self) -> tuple[float | None, float | None]:
        return self.log.span()

    def stacks(self) -> list[dict[str, Any]]:
        return _listed(self.log)

    def stack_dump(self, request: int) -> dict[str, Any]:
        dump = _read_dump(self.run_dir, request)
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
        dump = reply.get("dump") or _read_dump(self.run_dir, request)
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
                       "versions": {**_versions(), "coordinator": coordinator_versions},
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


# ------------------------------------------------------------------ replay
class ReplaySource:
    """The view of a finished (or crashed) run, from its directory alone (see the module docstring)."""

    mode = "replay"

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        if not (self.run_dir / EVENTS_FILE).is_file():
            raise NotFoundError(f"{self.run_dir}: no {EVENTS_FILE}: not a torchrt run directory")
        self.view = JobView.replay(self.run_dir)
        self.log = EventIndex(self.run_dir)
        try:
            self._state = json.loads((self.run_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._state = {}
        self._lock = threading.Lock()
        self._cursor = _Cursor(self.run_dir)

    def _view(self, at: float | None) -> JobView:
        return self.view if at is None else self._cursor.at(at)

    def snapshot(self, at: float | None = None) -> dict[str, Any]:
        with self._lock:
            state = self._view(at).snapshot()
            if at is not None:
                state["series"] = self._series_at(at)
        return {"coordinator": self._state.get("coordinator") or state["run"].get("coordinator"), **state,
                "tensorboard": str(self.run_dir / "tensorboard"), "written_at": at or self._state.get("written_at")}

    def page(self, part: str, kind: str, offset: int = 0, limit: int = 100, at: float | None = None) -> dict[str, Any]:
        with self._lock:
            return _view_query(lambda: self._view(at).page(part, kind, offset, limit))

    def points(self, part: str, subject: str, measure: str = "", level: int = 0,
               at: float | None = None) -> dict[str, Any]:
        _check_level(level)
        with self._lock:
            found = _view_query(lambda: self.view.points(part, subject, measure, level))
        return found if at is None else _cut(found, at, level)

    def _series_at(self, at: float) -> dict[str, Any]:
        """The snapshot's ``series`` (each series' newest ``[t, value]``) as of ``at``."""
        out: dict[str, Any] = {}
        for part, subject, measure, series in self.view.series.each():
            entry = out.setdefault(part, {"folded": self.view.series.sets[part].names.folded, "last": {}})
            for level in range(len(LEVELS)):
                cut = _cut(series.points(level), at, level)
                if cut["t"]:
                    entry["last"][series_name(subject, measure)] = [cut["t"][-1], cut["last"][-1]]
                    break
        return out

    def events(self, query: EventQuery) -> dict[str, Any]:
        return self.log.query(query)

    def span(self) -> tuple[float | None, float | None]:
        return self.log.span()

    def stacks(self) -> list[dict[str, Any]]:
        return _listed(self.log)

    def stack_dump(self, request: int) -> dict[str, Any]:
        dump = _read_dump(self.run_dir, request)
        if dump is None:
            raise NotFoundError(f"no stack dump {request} in {self.run_dir}")
        return grouped_dump(dump, f"{STACKS_DIR}/{request}.json")

    def take_stacks(self, rank: int | None, timeout_s: float = STACK_DUMP_TIMEOUT_S) -> dict[str, Any]:
        raise NotLiveError("this is a replay of a run directory: stacks can only be taken of a running job")

    def settings(self) -> dict[str, Any]:
        run = self.view.snapshot()["run"]
        coordinator = self._state.get("coordinator") or run.get("coordinator") or {}
        return public({"mode": self.mode, "endpoint": coordinator.get("endpoint"), "connected": False,
                       "run_id": run.get("run_id"), "run_dir": str(self.run_dir.resolve()), "run_dir_readable": True,
                       "tensorboard_dir": str(self.run_dir / "tensorboard"), "versions": _versions(),
                       "config": {"job": run.get("settings"), "coordinator": coordinator}})

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return lambda: None  # a finished run does not change

    def close(self) -> None:
        pass


class _Cursor:
    """A view folded up to a time, moved forward incrementally (back: from the start again)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._reset()

    def _reset(self) -> None:
        self.view = JobView()
        self.upto = float("-inf")
        self._events = read_events(self.run_dir)
        self._next: dict[str, Any] | None = next(self._events, None)

    def at(self, at: float) -> JobView:
        if at < self.upto:
            self._reset()
        while self._next is not None and _ts(self._next) <= at:
            self.view.apply(self._next, series=False)
            self._next = next(self._events, None)
        self.upto = at
        return self.view


def _ts(event: dict[str, Any]) -> float:
    ts = event.get("ts")
    return float(ts) if isinstance(ts, (int, float)) else float("-inf")


def _cut(points: dict[str, Any], at: float, level: int) -> dict[str, Any]:
    """Series points (columnar, oldest first) of samples at or before ``at`` only: a point whose
    whole bucket is (a point of the second ``at`` is in may hold a later sample)."""
    n = bisect.bisect_right(points["t"], at - LEVELS[level].resolution_s)
    return {**points, **{k: v[:n] for k, v in points.items() if isinstance(v, list)},
            "partial": points.get("partial", False) and n == len(points["t"])}
