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

import json
from typing import Any

from torchrt.contract import DEFAULT_PORT

MAX_LINE_BYTES = 8 * 1024 * 1024

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
    """Split ``HOST[:PORT]`` (IPv6 in brackets) into host and port."""
    endpoint = endpoint.strip()
    if not endpoint:
        raise ValueError("the rendezvous endpoint is empty; expected HOST:PORT")
    if endpoint.startswith("["):
        host, _, rest = endpoint[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif endpoint.count(":") == 1:
        host, port_text = endpoint.split(":")
    else:
        host, port_text = endpoint, ""
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad port in endpoint {endpoint!r}; expected HOST:PORT") from None
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} in endpoint {endpoint!r} is out of range 0-65535")
    return host, port

