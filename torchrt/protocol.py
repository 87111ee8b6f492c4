"""Wire format between the coordinator and its peers (handlers, workers, tools).

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

PROTOCOL_VERSION = 1
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


def parse_endpoint(endpoint: str, default_port: int = 29400) -> tuple[str, int]:
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


def round_store_prefix(run_id: str, round_number: int) -> str:
    """Key prefix under which everything of one round lives in the coordinator's store."""
    return f"torchrt/{run_id}/round{round_number}/"


def worker_gone_key(run_id: str, round_number: int, rank: int) -> str:
    """Store key the coordinator sets when the worker of ``rank`` in a round disconnected from it
    (its process exited or died): ranks waiting on that worker stop waiting."""
    return f"{round_store_prefix(run_id, round_number)}workers/gone/{rank}"
