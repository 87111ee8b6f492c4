"""The monitor's JSON API (``/api/v1``, docs/api.md): a Flask blueprint over a ViewSource.

Each route validates its parameters here (:class:`~monitor.errors.QueryError` names the key: 400)
and asks the source; the source's typed errors become their status (unknown dump, dataset, page
or series: 404; an action asked of a replay: 409; a coordinator that does not answer: 503), every
one as JSON ``{"error": ..., "key": ...}``. No request value ever becomes a path: a dump is named
by an integer (Flask's ``int`` converter) and read by the source under ``RUN_DIR/stacks/``, a
dataset by a name that must be one of the view's. ``at=`` (replay) is passed to the source, which
refuses it live. The timeline is built from the event log alone: the events of
:data:`TIMELINE`, each with a lane (``round``, ``restart``, ``checkpoint``, ``alert``; any
error-level event goes to ``error``) and a one-line label. ``/api/v1/ws`` and ``/metrics`` are
monitor.live's and monitor.prom's; any other path under ``/api/v1`` is a 404 in JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.json.provider import JSONProvider

from torchrt.contract import STACK_DUMP_TIMEOUT_S, EventType, Level
from torchrt.coordinator.observe import MAX_PAGE
from torchrt.errors import CoordinatorUnavailableError

from monitor.errors import NotFoundError, NotLiveError, QueryError
from monitor.logs import EventQuery, int_arg, number_arg, text_arg
from monitor.sentences import level_of, sentence
from monitor.sources import ViewSource

__all__ = ["PREFIX", "TIMELINE", "SnapshotAnswer", "api_blueprint"]

PREFIX = "/api/v1"
E = EventType
# The timeline's events and their lanes (their labels: monitor.sentences).
TIMELINE: dict[EventType, str] = {
    E.COORDINATOR_STARTED: "restart", E.COORDINATOR_RESTARTED: "restart", E.ROUND_STARTED: "round",
    E.ROUND_COMPLETED: "round", E.ROUND_TIMEOUT: "round", E.RENDEZVOUS_CLOSED: "round", E.RESTART: "restart",
    E.NODE_DEAD: "alert", E.CHECKPOINT_COMMITTED: "checkpoint", E.CHECKPOINT_FAILED: "checkpoint",
    E.CHECKPOINT_SKIPPED: "checkpoint", E.CHECKPOINT_RESTORED: "checkpoint", E.RANK_STRAGGLING: "alert",
    E.RANK_STALLED: "alert", E.RANK_RECOVERED: "alert", E.STACKS_DUMPED: "alert", E.ERROR: "error",
    E.RUN_DIR_ERROR: "error", E.SHUTDOWN: "restart",
}
TIMELINE_LIMIT = 500
_TIMELINE_TYPES = frozenset(t.value for t in TIMELINE)


def api_blueprint(source: ViewSource, snapshot_answer: SnapshotAnswer) -> Blueprint:
    """The ``/api/v1`` routes over ``source`` (see the module docstring and docs/api.md);
    ``/snapshot`` is ``snapshot_answer``'s, an answer over the same source."""
    api = Blueprint("api", __name__, url_prefix=PREFIX)
    _errors(api)

    @api.get("/snapshot")
    def snapshot() -> Response:
        return current_app.response_class(snapshot_answer.body(number_arg(request.args, "at")),
                                          mimetype=snapshot_answer.mimetype)

    @api.get("/pages/<part>/<kind>")
    def page(part: str, kind: str) -> Response:
        args = request.args
        offset = int_arg(args, "offset", 0) or 0
        limit = int_arg(args, "limit", 0, MAX_PAGE)
        return jsonify(source.page(part, kind, offset, 100 if limit is None else limit, at=number_arg(args, "at")))

    @api.get("/series")
    def series() -> Response:
        args = request.args
        part, subject = _required(args, "part"), _required(args, "subject")
        return jsonify(source.points(part, subject, text_arg(args, "measure") or "", int_arg(args, "level", 0) or 0,
                                     at=number_arg(args, "at")))

    @api.get("/events")
    def events() -> Response:
        return jsonify(source.events(EventQuery.parse(request.args, until=number_arg(request.args, "at"))))

    @api.get("/timeline")
    def timeline() -> Response:
        args = request.args
        until = min((t for t in (number_arg(args, "until"), number_arg(args, "at")) if t is not None), default=None)
        found = source.events(EventQuery(types=_TIMELINE_TYPES, limit=TIMELINE_LIMIT, until=until,
                                         since=number_arg(args, "since")))
        items = [_mark(e) for e in reversed(found["items"])]
        return jsonify(items=items, truncated=found["next_before"] is not None, span=list(source.span()))

    @api.get("/datasets/<name>/previews")
    def previews(name: str) -> Response:
        if name not in (source.snapshot().get("datasets") or {}):
            raise NotFoundError(f"no dataset {name[:100]!r} in this job")
        if source.mode != "live":
            return jsonify(dataset=name, items=[], live_only=True)
        rows = source.page("datasets", "previews", 0, MAX_PAGE)["items"]
        return jsonify(dataset=name, items=[r for r in rows if r.get("dataset") == name], live_only=True)

    @api.get("/stacks")
    def stacks() -> Response:
        return jsonify(items=source.stacks())

    @api.get("/stacks/<int:number>")
    def stack_dump(number: int) -> Response:
        return jsonify(source.stack_dump(number))

    @api.post("/stacks")
    def take_stacks() -> Response:
        body = request.get_json(silent=True) if request.data else {}
        if not isinstance(body, dict):
            raise QueryError("expected a JSON object {\"rank\": N or null, \"timeout_s\": seconds}", key="body",
                             expected="a JSON object")
        timeout = body.get("timeout_s", STACK_DUMP_TIMEOUT_S)
        return jsonify(source.take_stacks(body.get("rank"), timeout_s=timeout))

    @api.get("/settings")
    def settings() -> Response:
        return jsonify(source.settings())

    @api.get("/<path:unknown>")
    def unknown(unknown: str) -> tuple[Response, int]:
        return jsonify(error=f"no such API route: {PREFIX}/{unknown[:100]}"), 404

    return api


class SnapshotAnswer:
    """``GET /snapshot``'s body, encoded once per snapshot the source hands out, not per request:
    a live source hands out the same object until its next refresh (monitor.app's wrapper keeps
    that), so under load it is one ``json.dumps`` per refresh. The span and ``connected`` are read
    with the snapshot they are encoded with (as fresh as it is). ``json`` is the app's JSON
    provider (Flask's ``app.json``): the body is what ``jsonify`` would send."""

    def __init__(self, source: ViewSource, json: JSONProvider) -> None:
        self._source = source
        self._json = json
        self.mimetype: str = getattr(json, "mimetype", "application/json")  # DefaultJSONProvider's
        self._last: tuple[dict[str, Any], bool, bytes] | None = None  # the snapshot held: no id() reuse

    def body(self, at: float | None) -> bytes:
        snapshot = self._source.snapshot(at=at)
        connected = getattr(self._source, "connected", False)
        last = self._last
        if at is None and last is not None and last[0] is snapshot and last[1] == connected:
            return last[2]
        answer = {"mode": self._source.mode, "snapshot": snapshot, "span": list(self._source.span()), "at": at,
                  "connected": connected}
        body = (self._json.dumps(answer, separators=(",", ":")) + "\n").encode()  # what jsonify sends
        if at is None:
            self._last = (snapshot, connected, body)
        return body


def _errors(api: Blueprint) -> None:
    def handler(status: int) -> Callable[[Exception], tuple[Response, int]]:
        def answer(error: Exception) -> tuple[Response, int]:
            return jsonify(error=str(error), key=getattr(error, "key", None)), status
        return answer

    api.register_error_handler(QueryError, handler(400))
    api.register_error_handler(NotFoundError, handler(404))
    api.register_error_handler(NotLiveError, handler(409))
    api.register_error_handler(CoordinatorUnavailableError, handler(503))


def _required(args: Mapping[str, str], key: str) -> str:
    value = text_arg(args, key)
    if value is None:
        raise QueryError("is required", key=key, expected="a value")
    return value


def _mark(event: dict[str, Any]) -> dict[str, Any]:
    """One event on the timeline: its lane, label and the fields that place it."""
    kind = EventType(event["type"])
    level = level_of(kind)
    return {"ts": event.get("ts"), "kind": "error" if level is Level.ERROR else TIMELINE[kind],
            "label": sentence(event), "type": kind.value, "seq": event.get("seq"), "level": level.value,
            **{k: event[k] for k in ("round", "rank", "node", "node_id", "step", "request") if k in event}}
