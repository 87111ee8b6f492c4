"""Who may use the monitor: loopback without a token, anyone with the token otherwise.

Rules (decided by :meth:`Gate.admits`; enforced for every request by :meth:`Gate.check`, installed as a
``before_request`` hook):

- The monitor binds 127.0.0.1 by default. Binding any other address without a token is refused
  before anything listens (:func:`check_bind` raises :class:`InsecureBindError`, one line).
- With a token, every request (pages, ``/api/v1``, the websocket, ``/metrics``) must carry it:
  ``Authorization: Bearer TOKEN`` or the session cookie the ``/login`` form sets (HttpOnly,
  SameSite=Strict, so no other site's page can send it along). The cookie holds an HMAC of the
  token, not the token. Comparisons are constant-time (:func:`hmac.compare_digest`). Pages
  answer a missing token with a redirect to ``/login``, everything else with 401 JSON.
  ``/login`` itself, ``/static/`` and ``/favicon.ico`` are open (they show no job data).
- Without a token (loopback only), every request is open, but only under a loopback ``Host``
  header: a page of another site that rebinds its DNS name to 127.0.0.1 gets 403, not the job.
  POST actions (stack dumps) thus need the token whenever one is set, and are loopback-only
  otherwise; a POST whose ``Origin`` is another site is refused either way (403), and the API
  takes JSON bodies only, which a cross-site form cannot send.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Request, Response, jsonify, redirect, request, url_for
from werkzeug.wrappers import Request as WerkzeugRequest

from torchrt.errors import TorchrtError
from torchrt.protocol import is_loopback

logger = logging.getLogger(__name__)

__all__ = ["COOKIE", "Gate", "InsecureBindError", "check_bind", "session_value"]

COOKIE = "torchrt_monitor"
OPEN_PREFIXES = ("/static/",)
OPEN_PATHS = frozenset({"/login", "/favicon.ico"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class InsecureBindError(TorchrtError, ValueError):
    """The monitor was asked to listen beyond loopback without a token."""


def check_bind(host: str, token: str | None) -> None:
    """Raise :class:`InsecureBindError` if ``host`` is reachable from other machines and no token is set."""
    if token or is_loopback(host):
        return
    raise InsecureBindError(f"the monitor binds {host}, reachable from other machines: it needs a token "
                            f"(--token-file, TORCHRT_TOKEN_FILE or TORCHRT_TOKEN), or bind 127.0.0.1")


def session_value(token: str) -> str:
    """What the session cookie holds for ``token`` (an HMAC of it, so the cookie is not the token)."""
    return hmac.new(token.encode(), b"torchrt-monitor-session", hashlib.sha256).hexdigest()


def _host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port (``[::1]:80`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@dataclass(frozen=True)
class Gate:
    """The access rule of one app (see the module docstring); ``token`` None: loopback-only, open."""

    token: str | None

    def check(self) -> Response | None:
        """``before_request``: None lets the request through, else the answer that refuses it."""
        if self.admits(request):
            return None
        if _cross_site(request):
            return _refuse(request, 403, "a request from another site's page is refused")
        if self.token is None:
            return _refuse(request, 403, "this monitor answers only under a loopback host name")
        if request.method == "GET" and _is_page(request):
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        return _refuse(request, 401, "a token is required: Authorization: Bearer TOKEN, or log in at /login")

    def admits(self, req: WerkzeugRequest) -> bool:
        """Whether ``req`` may go on (the rules of the module docstring); what :meth:`check`
        refuses otherwise. It needs no app context, so the snapshot's fast path
        (:mod:`monitor.fastpath`) asks it too."""
        if _cross_site(req):
            return False
        if self.token is None:
            return _host_name(req.host).lower() in _LOOPBACK_NAMES
        return req.path in OPEN_PATHS or req.path.startswith(OPEN_PREFIXES) or self.allows(req)

    def allows(self, req: WerkzeugRequest) -> bool:
        """Whether ``req`` carries the token (bearer header or session cookie)."""
        if self.token is None:
            return True
        header = req.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), self.token.encode()):
            return True
        cookie = req.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), session_value(self.token).encode())

    def accepts(self, candidate: str) -> bool:
        """Whether ``candidate`` (typed into the login form) is the token."""
        return self.token is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def log_in(self, response: Response, secure: bool) -> Response:
        """Set the session cookie on ``response`` (``secure``: the page was served over https)."""
        assert self.token is not None
        response.set_cookie(COOKIE, session_value(self.token), httponly=True, samesite="Strict", secure=secure,
                            path="/")
        return response


def _cross_site(req: WerkzeugRequest) -> bool:
    """An unsafe method sent by another site's page (its ``Origin`` is not this host)."""
    origin = req.headers.get("Origin")
    return req.method not in SAFE_METHODS and bool(origin) and urlsplit(origin).netloc != req.host


def _is_page(req: Request) -> bool:
    return not req.path.startswith("/api/") and req.path != "/metrics"


def _refuse(req: Request, status: int, message: str) -> Response:
    logger.info("refused %s %s from %s: %s", req.method, req.path, req.remote_addr, message)
    response = jsonify(error=message)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="torchrt monitor"'
    return response
