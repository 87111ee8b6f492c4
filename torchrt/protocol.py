"""Wire framing between the coordinator and its peers (handlers, workers, tools).

The names carried inside the frames (ops, push kinds, error codes, roles, event
types) are defined in :mod:`torchrt.contract`.

One TCP connection per peer carries newline-delimited JSON objects in both
directions. A request carries ``op`` and a client-chosen ``id``; its reply
echoes the ``id``. The coordinator also pushes unsolicited messages (no ``id``)
such as ``state`` whenever something a peer caches changes, which is how the
handler answers ``num_nodes_waiting()`` without asking anybody.

JSON lines keep the protocol debuggable with ``nc`` and cost ~10 µs per
message here, far below the network and scheduling noise that matters.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from torchrt.contract import DEFAULT_PORT
from torchrt.errors import EndpointError

MAX_LINE_BYTES = 8 * 1024 * 1024  # a line of a connection that said its hello (telemetry batches)
HELLO_LINE_BYTES = 64 * 1024  # a line of one that has not yet (a hello is a few hundred bytes)

Message = dict[str, Any]


def encode(message: Message) -> bytes:
    """Serialize one message as a single JSON line."""
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> Message:
    """Parse one JSON line; raises ``ValueError`` on anything but a JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {type(message).__name__}")
    return message


def parse_endpoint(endpoint: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` into host and port; an IPv6 address goes in brackets
    (``[::1]:1234``, ``[::1]``). Raises :class:`~torchrt.errors.EndpointError` (a ``ValueError``)."""
    text = endpoint.strip()
    if not text:
        raise EndpointError(endpoint, "it is empty; expected HOST:PORT")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise EndpointError(endpoint, f"expected [IPV6]:PORT, e.g. [::1]:{default_port}")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise EndpointError(endpoint, f"an IPv6 address needs brackets, e.g. [::1]:{default_port}")
    else:
        host, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    if port_text is None:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()):
        raise EndpointError(endpoint, f"the port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port < 65536:
        raise EndpointError(endpoint, f"the port {port} is out of range 0-65535")
    return host, port


def format_endpoint(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets (what ``parse_endpoint`` reads back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_host(host: str) -> str:
    """The address a client on this machine dials to reach a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only (127.0.0.0/8,
    ``::1``, or a name that resolves to nothing else); ``0.0.0.0`` and ``::`` are not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(resolved) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in resolved)
