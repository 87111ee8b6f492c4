"""Where the monitor's data comes from: a running coordinator, or a finished run directory.

The monitor adds no second source of truth: both sources serve the job view
(:mod:`torchrt.view`) as its owner built it, through one :class:`ViewSource` protocol that the API
(monitor.api), the websocket broadcaster (monitor.live) and the Prometheus collector use alike.

The two sources: :class:`monitor.live_source.LiveSource` (a running coordinator) and
:class:`monitor.replay_source.ReplaySource` (a run directory). This module holds what they share:
the protocol, and the shaping of answers both give (secrets left out, dumps grouped, versions).

Both read the run's event log through :class:`monitor.logs.EventIndex` and its stack dumps
from ``RUN_DIR/stacks/<N>.json``, a path built from an integer only.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

import torchrt
from torchrt.contract import STACK_DUMP_TIMEOUT_S, EventType
from torchrt.coordinator.stacks import STACKS_DIR
from torchrt.view.fold import ViewQueryError
from torchrt.view.series import LEVELS
from torchrt.view.stacks import StackDumpError, group_stacks, render, summary

from monitor.errors import NotFoundError, NotLiveError, QueryError
from monitor.logs import EventIndex, EventQuery

__all__ = ["Listener", "NotFoundError", "NotLiveError", "QueryError", "RunRecord", "ViewSource", "check_level", "grouped_dump",
           "listed_dumps", "not_replay", "public", "read_dump", "versions", "view_query"]

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
class RunRecord:
    """What both sources read from the run's record the same way: its event log (``self.log``)
    and the list of its stack dumps."""

    log: EventIndex

    def events(self, query: EventQuery) -> dict[str, Any]:
        return self.log.query(query)

    def span(self) -> tuple[float | None, float | None]:
        return self.log.span()

    def stacks(self) -> list[dict[str, Any]]:
        return listed_dumps(self.log)


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


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "torchrt": torchrt.__version__, "python": sys.version.split()[0]}


def listed_dumps(log: EventIndex) -> list[dict[str, Any]]:
    """The run's stack dumps, newest first: their ``stacks_dumped`` events."""
    found = log.query(EventQuery(types=frozenset({EventType.STACKS_DUMPED.value}), limit=500))["items"]
    return [{k: e.get(k) for k in ("request", "ts", "reason", "ranks", "answered", "missing", "slowest_s", "path")}
            for e in found]


def read_dump(run_dir: Path | None, request: int) -> dict[str, Any] | None:
    """``RUN_DIR/stacks/<request>.json`` (the path is built from an int only), or None."""
    if run_dir is None or isinstance(request, bool) or not isinstance(request, int) or request < 1:
        return None
    try:
        return json.loads((run_dir / STACKS_DIR / f"{request:d}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def view_query(call: Callable[[], Any]) -> Any:
    """A query of a page or series the view does not have: NotFoundError (404)."""
    try:
        return call()
    except ViewQueryError as e:
        raise NotFoundError(str(e)) from None


def check_level(level: int) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(LEVELS):
        raise QueryError(f"expected a level in 0..{len(LEVELS) - 1}, got {level!r}", key="level",
                         expected=f"0..{len(LEVELS) - 1}", got=level)


def not_replay(at: float | None) -> None:
    if at is not None:
        raise QueryError("the time slider is for a replayed run; a live job shows now", key="at",
                         expected="no 'at' in live mode", got=at)
