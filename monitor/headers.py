"""The headers every answer of the monitor carries, built once, not per request.

A strict Content-Security-Policy (the pages hold no inline script or style; only TensorBoard may be
framed, and only when its URL is known), no MIME sniffing, no framing of the monitor itself, and a
same-origin referrer. Job data is never cached (``Cache-Control: no-store``); static files may be.
:func:`monitor.app.create_app` adds them to every Flask response; the snapshot's fast path
(:mod:`monitor.fastpath`) sends the same tuple.
"""

from __future__ import annotations

import functools

__all__ = ["NO_STORE", "security_headers"]

NO_STORE = ("Cache-Control", "no-store")


@functools.lru_cache(maxsize=4)
def security_headers(tensorboard_url: str | None) -> tuple[tuple[str, str], ...]:
    """The headers of every answer while TensorBoard is at ``tensorboard_url`` (it may be set
    after the app is made, so this is keyed by it)."""
    frame = f"frame-src {tensorboard_url.rstrip('/')}; " if tensorboard_url else ""
    return (("Content-Security-Policy",
             f"default-src 'self'; img-src 'self' data:; connect-src 'self'; {frame}object-src 'none'; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
            ("X-Content-Type-Options", "nosniff"),
            # same-origin, not no-referrer: with no-referrer Chromium posts the login form with
            # `Origin: null`, which the cross-site check (monitor/auth.py) must refuse
            ("Referrer-Policy", "same-origin"))
