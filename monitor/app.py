"""The monitor's Flask app: pages, the JSON API, the websocket, ``/metrics``, access and errors.

:func:`create_app` wires the parts around one :class:`~monitor.sources.ViewSource` (live or a
replayed run directory); it holds no job state of its own:

- pages (:data:`PAGES`): ``render_template(f"{page}.html", page=page, mode=..., ...)``, one
  template per page over a base with the navigation (``monitor/templates``); ``/login`` exists
  only when a token is set;
- ``/api/v1``: :func:`monitor.api.api_blueprint`; its settings carry the monitor's and
  TensorBoard's URLs too (:class:`MonitorOptions`, set once the servers listen), its series the
  monitor's own requests per second (:class:`RequestRate`: part ``monitor``, subject
  ``requests``, measure ``per_s``; the Activity page's chart);
- ``/api/v1/ws``: :mod:`monitor.live` (one broadcaster thread per app);
- ``/metrics``: Prometheus text from :mod:`monitor.prom` (a collector over the snapshot);
- access: :class:`monitor.auth.Gate` before every request;
- ``GET /api/v1/snapshot``: answered beneath Flask when the gate admits it as it stands
  (:mod:`monitor.fastpath`), with the Flask route's body, headers and request count;
- errors: an unknown page gets the 404 page (``404.html``); anything under ``/api/`` gets JSON
  (``{"error": ...}``: 400 with the offending ``key`` for a bad parameter (:class:`QueryError`),
  404 (:class:`NotFoundError`, unknown routes), 405, 409 (:class:`NotLiveError`), 500).

The app keeps what it started in ``app.extensions["torchrt_monitor"]`` (:class:`Monitor`);
:func:`close_app` stops the broadcaster and closes the source.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_from_directory
from werkzeug.exceptions import HTTPException

from monitor.api import SnapshotAnswer, api_blueprint
from monitor.auth import Gate
from monitor.fastpath import SnapshotFastPath
from monitor.headers import NO_STORE, security_headers
from monitor.errors import NotFoundError, NotLiveError, QueryError
from monitor.live import Broadcaster, register_websocket
from monitor.prom import metrics_view
from monitor.sentences import presented
from monitor.sources import ViewSource
from torchrt.view.series import LEVELS, Series

logger = logging.getLogger(__name__)

__all__ = ["PAGES", "Monitor", "MonitorOptions", "close_app", "create_app"]

PAGES = ("overview", "datasets", "tasks", "activity", "rounds", "checkpoints", "stacks", "logs", "settings")
EXTENSION = "torchrt_monitor"


@dataclass
class MonitorOptions:
    """How the app is served. ``monitor_url`` / ``tensorboard_url`` may be set after
    :func:`create_app` (the servers pick their ports when they bind): they are read per request."""

    token: str | None = None
    monitor_url: str | None = None
    tensorboard_url: str | None = None
    update_interval_s: float = 0.1  # the broadcaster's tick: at most 10 updates/s per socket

    def urls(self) -> dict[str, str | None]:
        return {"monitor_url": self.monitor_url, "tensorboard_url": self.tensorboard_url}


@dataclass
class Monitor:
    """What one app holds: its source, options, access gate and broadcaster."""

    source: ViewSource
    options: MonitorOptions
    gate: Gate
    broadcaster: Broadcaster


class RequestRate:
    """The monitor's own requests per second, as a view series (``monitor`` / ``requests`` /
    ``per_s``): every second that saw requests, and the quiet seconds between, one sample."""

    MAX_GAP_S = 60  # quiet seconds filled with 0 at most (an idle monitor adds nothing)

    def __init__(self) -> None:
        self.series = Series()
        self._lock = threading.Lock()
        self._second = 0.0
        self._count = 0

    def count(self, now: float) -> None:
        with self._lock:
            self._roll(now)
            self._count += 1

    def _roll(self, now: float) -> None:
        second = float(math.floor(now))
        if second <= self._second:
            return
        if self._second:  # close the counted second, and the quiet ones since (as 0)
            self.series.add(self._second, self._count)
            for quiet in range(1, min(int(second - self._second), self.MAX_GAP_S)):
                self.series.add(self._second + quiet, 0.0)
        self._second, self._count = second, 0

    def points(self, level: int) -> dict[str, Any]:
        with self._lock:
            self._roll(time.time())
            return self.series.points(level)

    def last(self) -> list[float] | None:
        with self._lock:
            self._roll(time.time())
            return self.series.last()


class _AppSource:
    """``source`` as the app serves it: its settings also carry the monitor's and TensorBoard's
    URLs (no secret), its series the monitor's own requests/s (:class:`RequestRate`), and its
    recent problems (``alerts.recent``) their sentences (:func:`monitor.sentences.presented`), as
    the Logs page shows them."""

    PART, SUBJECT, MEASURE = "monitor", "requests", "per_s"

    def __init__(self, source: ViewSource, options: MonitorOptions, requests: RequestRate) -> None:
        self._source = source
        self._options = options
        self._requests = requests
        self._last: tuple[dict[str, Any], list[float] | None, dict[str, Any]] | None = None

    def settings(self) -> dict[str, Any]:
        return {**self._source.settings(), **self._options.urls()}

    def snapshot(self, at: float | None = None) -> dict[str, Any]:
        """The source's snapshot with the monitor's series; the same object while neither changed
        (what a cache keyed by the snapshot can rely on)."""
        snapshot, rate = self._source.snapshot(at), self._requests.last()
        last = self._last
        if last is not None and last[0] is snapshot and last[1] == rate:
            return last[2]
        series = {**snapshot.get("series", {}), self.PART: {"folded": 0, "last": {
            f"{self.SUBJECT}/{self.MEASURE}": rate}}}
        served = {**snapshot, "series": series}
        alerts = snapshot.get("alerts")
        if isinstance(alerts, dict) and isinstance(alerts.get("recent"), list):
            served["alerts"] = {**alerts, "recent": [presented(e) for e in alerts["recent"] if isinstance(e, dict)]}
        self._last = (snapshot, rate, served)
        return served

    def points(self, part: str, subject: str, measure: str = "", level: int = 0,
               at: float | None = None) -> dict[str, Any]:
        if (part, subject, measure) != (self.PART, self.SUBJECT, self.MEASURE):
            return self._source.points(part, subject, measure, level, at)
        if not 0 <= level < len(LEVELS):
            raise QueryError(f"expected a level in [0, {len(LEVELS)}), got {level!r}", key="level")
        return self._requests.points(level)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


def create_app(source: ViewSource, options: MonitorOptions | None = None) -> Flask:
    """The monitor app over ``source`` (see the module docstring)."""
    options = options or MonitorOptions()
    app = Flask("monitor", root_path=str(Path(__file__).parent))
    app.json.sort_keys = False
    requests = RequestRate()
    source = _AppSource(source, options, requests)
    monitor = Monitor(source=source, options=options, gate=Gate(options.token),
                      broadcaster=Broadcaster(source, interval_s=options.update_interval_s))
    app.extensions[EXTENSION] = monitor
    app.before_request(lambda: requests.count(time.time()))
    app.before_request(monitor.gate.check)
    snapshot = SnapshotAnswer(source, app.json)
    app.register_blueprint(api_blueprint(source, snapshot))
    register_websocket(app, monitor.broadcaster)
    app.add_url_rule("/metrics", "metrics", metrics_view(source))
    _add_pages(app, monitor)
    _add_errors(app)
    app.after_request(lambda response: _secure_headers(response, options))
    app.wsgi_app = SnapshotFastPath(app.wsgi_app, snapshot, monitor.gate, requests.count, options)  # type: ignore[method-assign]
    return app


def _secure_headers(response: Response, options: MonitorOptions) -> Response:
    """:mod:`monitor.headers` on every answer (where the view did not set its own), ``no-store``
    on all but static files."""
    headers = response.headers
    for name, value in security_headers(options.tensorboard_url):
        if name not in headers:
            headers[name] = value
    if NO_STORE[0] not in headers and not request.path.startswith("/static/"):
        headers[NO_STORE[0]] = NO_STORE[1]
    return response


def close_app(app: Flask) -> None:
    """Stop what :func:`create_app` started (the broadcaster) and close the source."""
    monitor: Monitor = app.extensions[EXTENSION]
    monitor.broadcaster.close()
    monitor.source.close()


def _context(monitor: Monitor, page: str) -> dict[str, Any]:
    """What every page template gets (base.html: the navigation, the mode badge, TensorBoard's link)."""
    return {"page": page, "pages": PAGES, "mode": monitor.source.mode,
            "token_required": monitor.options.token is not None, **monitor.options.urls()}


def _add_pages(app: Flask, monitor: Monitor) -> None:
    @app.get("/")
    def overview() -> str:
        return render_template("overview.html", **_context(monitor, "overview"))

    @app.get("/<page>")
    def page(page: str) -> str:
        if page not in PAGES or page == "overview":
            abort(404)
        return render_template(f"{page}.html", **_context(monitor, page))

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return send_from_directory(app.static_folder, "favicon.svg", mimetype="image/svg+xml")

    if monitor.options.token is None:
        return

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response | tuple[str, int] | str:
        target = _local_path(request.values.get("next", "/"))
        if request.method == "GET":
            return render_template("login.html", **_context(monitor, "login"), next=target)
        if not monitor.gate.accepts(request.form.get("token", "")):  # never echoed back
            return render_template("login.html", **_context(monitor, "login"), next=target,
                                   error="That is not the job's token."), 401
        return monitor.gate.log_in(redirect(target, code=303), secure=request.is_secure)


def _local_path(target: str) -> str:
    """``target`` if it is a path on this server, else ``/`` (no open redirect via ``next``)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _add_errors(app: Flask) -> None:
    @app.errorhandler(QueryError)
    def bad_query(e: QueryError) -> tuple[Response, int]:
        return jsonify(error=str(e), key=e.key), 400

    @app.errorhandler(NotFoundError)
    def not_found(e: NotFoundError) -> tuple[Response, int]:
        return jsonify(error=str(e)), 404

    @app.errorhandler(NotLiveError)
    def not_live(e: NotLiveError) -> tuple[Response, int]:
        return jsonify(error=str(e)), 409

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response | tuple[str, int]:
        if request.path.startswith("/api/") or request.path == "/metrics":
            response = e.get_response()
            response.data = app.json.dumps({"error": e.description or e.name})
            response.content_type = "application/json"
            return response
        if e.code == 404:
            return render_template("404.html", **_context(app.extensions[EXTENSION], "notfound"),
                                   path=request.path), 404
        return e

    @app.errorhandler(Exception)
    def server_error(e: Exception) -> Response | tuple[Response, int]:
        if isinstance(e, HTTPException):
            return http_error(e)
        logger.exception("%s %s failed", request.method, request.path)
        if request.path.startswith("/api/"):
            return jsonify(error=f"internal error: {type(e).__name__}"), 500
        return Response("internal error; see the monitor's log", status=500, mimetype="text/plain")
