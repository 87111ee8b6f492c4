"""The snapshot's fast path: a plain ``GET /api/v1/snapshot`` answered beneath Flask.

Why: the snapshot is the URL the monitor is read through most (every page load; any script
that polls the job, which is what the benchmark's ``api_rps`` measures). Its body is encoded once
per refresh (:class:`monitor.api.SnapshotAnswer`), so what a request costs is the framework around
it: Flask's request context, routing, hooks and response object took 0.145 ms a request here
(benchmarks/RESULTS.md), a quarter of the monitor process's CPU per snapshot request. On a
training node that CPU is taken from the job.

What: a WSGI middleware in front of ``app.wsgi_app``. It answers a request only when all of this
holds: the method is ``GET``, the path is exactly ``/api/v1/snapshot``, there is no query string
(``at=`` goes to Flask), the gate admits the request as it stands (:meth:`monitor.auth.Gate.admits`,
the rule Flask's ``before_request`` hook applies) and the source gives the body. The answer is the
Flask route's: the same bytes, ``Content-Type``, :mod:`monitor.headers`, and the request is counted
in the monitor's requests/s like any other. Everything else, including every request the gate
would refuse or redirect and a source that fails, goes to Flask untouched, so refusals and errors
(and their logging) have one implementation. tests/test_monitor_api.py compares the two answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from werkzeug.wrappers import Request

from monitor.api import PREFIX, SnapshotAnswer
from monitor.auth import Gate
from monitor.headers import NO_STORE, security_headers

logger = logging.getLogger(__name__)

__all__ = ["SnapshotFastPath"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Options(Protocol):  # what the fast path reads of monitor.app.MonitorOptions (per request: it may change)
    tensorboard_url: str | None


class SnapshotFastPath:
    """``app`` (the Flask app's ``wsgi_app``) with a plain snapshot GET answered in front of it
    (see the module docstring). ``count(now)`` counts a request in the monitor's requests/s."""

    PATH = f"{PREFIX}/snapshot"

    def __init__(self, app: WSGIApp, answer: SnapshotAnswer, gate: Gate, count: Callable[[float], None],
                 options: _Options) -> None:
        self.app = app
        self._answer = answer
        self._gate = gate
        self._count = count
        self._options = options

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != self.PATH
                or environ.get("QUERY_STRING")
                or not self._gate.admits(Request(environ, populate_request=False, shallow=True))):
            return self.app(environ, start_response)
        try:
            body = self._answer.body(None)
        except Exception:  # noqa: BLE001 - Flask's route answers it (a JSON error) and logs it, as for any route
            logger.debug("the snapshot's fast path leaves a failing source to Flask", exc_info=True)
            return self.app(environ, start_response)
        self._count(time.time())
        start_response("200 OK", [("Content-Type", self._answer.mimetype), ("Content-Length", str(len(body))),
                                  *security_headers(self._options.tensorboard_url), NO_STORE])
        return [body]
