"""Serve a monitor app: in a thread of this process, or as the monitor process's gunicorn.

Two servers, one app (:func:`monitor.app.create_app`), both with a thread per connection, which
flask-sock needs (a websocket holds its request thread for as long as its page is open):

- :class:`MonitorServer`: Werkzeug's threaded WSGI server (``make_server(..., threaded=True)``)
  on a daemon thread of the caller's process, 127.0.0.1 and a free port by default. What tests
  and anything embedding a monitor use. It closes every connection after one response (Werkzeug
  does not keep connections alive) and starts a thread per connection: 0.6-0.9 ms of CPU per
  snapshot request here, 780-1,200 requests/s on this 2-core machine, against gunicorn's 1,530
  in the same runs (benchmarks/RESULTS.md, "Monitor").
- :func:`serve_gunicorn`: the monitor process (``torchrt monitor``, started by ``torchrt
  coordinator`` and ``torchrt run``) serves with gunicorn, the production WSGI server flask-sock
  documents: its ``gthread`` worker keeps connections alive and reuses a pool of threads (about
  0.4 ms of CPU per snapshot request with :mod:`monitor.fastpath`: 1,900 requests/s with the
  client on the same two cores, benchmarks/RESULTS.md). One worker
  process: one app, so one broadcaster and one connection to the coordinator, whatever the
  number of pages open. The listening socket is bound here first (so ``port=0`` has a known
  port, the URL is known before the worker starts, and a taken port is a clear error); the
  worker builds the app (``make_app(url)``: sources and threads must be created after the fork).

Binding an address other machines can reach needs a token (:func:`monitor.auth.check_bind`,
checked before anything listens). Request log lines go to this module's logger at DEBUG.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from monitor.app import EXTENSION, close_app
from monitor.auth import check_bind
from torchrt.protocol import connect_host, format_endpoint

logger = logging.getLogger(__name__)

__all__ = ["GUNICORN_THREADS", "MonitorServer", "serve_gunicorn"]

GUNICORN_THREADS = 64  # connections served at once: open pages (one websocket each) plus requests
GRACEFUL_STOP_S = 2  # seconds open websockets get when the monitor stops


class _RequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s %s", self.command, self.path, code)


class MonitorServer:
    """``app`` served on ``host:port`` (port 0: a free one) from a daemon thread; a context manager.

    ``start()`` binds (``OSError`` if it cannot; :class:`~monitor.auth.InsecureBindError` off
    loopback without a token), records :attr:`url` in the app's options (the Settings page shows
    it) and serves; ``stop()`` stops serving and closes the app (broadcaster, source)."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where a browser on this machine reaches the monitor (``http://HOST:PORT``)."""
        return f"http://{format_endpoint(connect_host(self.host), self.port)}"

    def start(self) -> MonitorServer:
        options = self.app.extensions[EXTENSION].options
        check_bind(self.host, options.token)
        self._server = make_server(self.host, self.port, self.app, threaded=True,
                                   request_handler=_RequestHandler)
        self._server.daemon_threads = True  # an open websocket must not hold the process at exit
        self.port = self._server.server_port
        options.monitor_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="torchrt-monitor-http", daemon=True)
        self._thread.start()
        logger.info("torchrt monitor serving on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the app; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        close_app(self.app)

    def __enter__(self) -> MonitorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_gunicorn(make_app: Callable[[str], Flask], host: str, port: int, token: str | None,
                   on_serving: Callable[[str], None], threads: int = GUNICORN_THREADS) -> int:
    """Serve ``make_app(url)`` with gunicorn (one ``gthread`` worker, see the module docstring) on
    ``host:port`` until SIGTERM or SIGINT; ``on_serving(url)`` is called in the worker once its app
    is built. Raises ``OSError`` if the address cannot be bound, :class:`~monitor.auth.InsecureBindError`
    off loopback without a token; returns gunicorn's exit status."""
    from gunicorn.app.base import BaseApplication

    check_bind(host, token)
    listener = _listen(host, port)
    url = f"http://{format_endpoint(connect_host(host), listener.getsockname()[1])}"
    fd = listener.detach()  # gunicorn owns it now (and closes it)
    settings = {"bind": [f"fd://{fd}"], "workers": 1, "worker_class": "gthread", "threads": threads,
                "keepalive": 5, "graceful_timeout": GRACEFUL_STOP_S, "timeout": 60, "accesslog": None,
                "loglevel": "warning", "proc_name": "torchrt-monitor",
                "post_worker_init": lambda worker: on_serving(url)}

    class Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return make_app(url)

    arbiter = os.getpid()
    try:
        Gunicorn().run()
    except SystemExit as e:
        if os.getpid() != arbiter:  # the worker, forked inside run(): it exits as gunicorn says
            raise
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0
