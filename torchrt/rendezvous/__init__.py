"""The ``torchrt`` rendezvous backend for torchrun.

torchrun loads the entry point ``torchrun.handlers: torchrt`` and calls it with
no arguments; what it returns is registered as the creator of handlers. So
``handler_factory`` returns ``create_handler`` rather than being it.

This module imports nothing at load time on purpose: torch's rendezvous package
loads out-of-tree entry points while it is itself being imported, so any
import of torchrt code here (which subclasses torch's rendezvous types) would
be circular whenever torchrt happens to be imported first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from torchrt.rendezvous.handler import TorchrtRendezvousHandler


def create_handler(params: RendezvousParameters) -> TorchrtRendezvousHandler:
    """The creator torchrun's registry calls with the parsed ``--rdzv-*`` arguments."""
    from torchrt.rendezvous.handler import TorchrtRendezvousHandler

    return TorchrtRendezvousHandler(params)


def handler_factory() -> Any:
    """Entry point for the ``torchrun.handlers`` group."""
    return create_handler


__all__ = ["create_handler", "handler_factory"]
