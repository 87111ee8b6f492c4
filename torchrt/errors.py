"""Typed errors raised by torchrt.

Everything that can go wrong while nodes meet derives from torch's own
``RendezvousError`` so that torchrun's elastic agent treats it exactly like a
failure of its built-in backends. A barrier that times out is a store error,
as it would be for torch's own store operations. Messages always name the
node, run id, barrier or setting that is at fault.
"""

from __future__ import annotations

from torch.distributed import DistStoreError
from torch.distributed.elastic.rendezvous.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousTimeoutError,
)

__all__ = [
    "BarrierError",
    "CoordinatorUnavailableError",
    "NodeRejectedError",
    "ProtocolError",
    "RendezvousClosedError",
    "RendezvousConfigError",
    "RendezvousConnectionError",
    "RendezvousError",
    "RendezvousTimeoutError",
    "error_from_reply",
]


class RendezvousConfigError(RendezvousError, ValueError):
    """A ``--rdzv-conf`` key is unknown or its value is not what it should be."""


class CoordinatorUnavailableError(RendezvousConnectionError):
    """No coordinator answered at the rendezvous endpoint."""


class NodeRejectedError(RendezvousError):
    """The coordinator refused this node: other run id, bad token, mismatched job shape."""


class ProtocolError(RendezvousConnectionError):
    """The peer at the endpoint does not speak torchrt's protocol."""


class BarrierError(DistStoreError):
    """Not every rank reached a ``torchrt.barrier`` in time (a store error, as torch's own)."""


_BY_CODE: dict[str, type[RendezvousError]] = {
    "rejected": NodeRejectedError,
    "closed": RendezvousClosedError,
    "timeout": RendezvousTimeoutError,
    "protocol": ProtocolError,
}


def error_from_reply(code: str, message: str) -> RendezvousError:
    """Turn an error reply of the coordinator into the matching exception."""
    return _BY_CODE.get(code, RendezvousError)(message)
