"""The ``torchrt`` rendezvous backend for torchrun.

torchrun loads the entry point ``torchrun.handlers: torchrt`` and calls it with
no arguments; what it returns is registered as the creator of handlers. So
``handler_factory`` returns ``create_handler`` rather than being it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters

from torchrt.rendezvous.handler import BACKEND_NAME, TorchrtRendezvousHandler, create_handler, round_store_prefix
from torchrt.rendezvous.options import RendezvousOptions


def handler_factory() -> Callable[[RendezvousParameters], RendezvousHandler]:
    """Entry point for the ``torchrun.handlers`` group."""
    return create_handler


__all__ = [
    "BACKEND_NAME",
    "RendezvousOptions",
    "TorchrtRendezvousHandler",
    "create_handler",
    "handler_factory",
    "round_store_prefix",
]
