"""Typed errors raised by torchrt, under one root: :class:`TorchrtError`.

Every error class of torchrt derives from ``TorchrtError``, so one ``except``
catches anything torchrt raises on purpose; each also keeps the base its users
expect from torch or Python. Everything that can go wrong while nodes meet
derives from torch's own ``RendezvousError`` so that torchrun's elastic agent
treats it exactly like a failure of its built-in backends; a barrier that
times out is a ``DistStoreError``, as it would be for torch's own store
operations; bad input is a ``ValueError``.

Bad input is a :class:`FieldError`: it carries the ``key`` at fault, the
``expected`` value, what it ``got`` and the ``problem`` as text, and its
message is ``KEY: PROBLEM`` (``join_timeout: expected a number > 0, got 0``).
The checks of :mod:`torchrt.validation` raise it; the config errors of each
layer (``ConfigError`` of a YAML file, ``RendezvousConfigError`` of
``--rdzv-conf``, ``CheckpointConfigError``, ``DataConfigError``) are
subclasses that add where the key was read (``context``), so a layer re-raises
another's error from its fields, never by parsing its message. Messages always
name the node, run id, barrier or setting that is at fault.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch.distributed import DistStoreError
from torch.distributed.elastic.rendezvous.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousTimeoutError,
)

from torchrt.contract import Code

__all__ = [
    "BarrierError",
    "CoordinatorError",
    "CoordinatorUnavailableError",
    "EndpointError",
    "FieldError",
    "NodeRejectedError",
    "OperationForbiddenError",
    "ProtocolError",
    "RendezvousClosedError",
    "RendezvousConfigError",
    "RendezvousConnectionError",
    "RendezvousError",
    "RendezvousTimeoutError",
    "RoundSupersededError",
    "RoundTimeoutError",
    "RunClosedError",
    "TokenFileError",
    "TorchrtError",
    "error_from_reply",
]

E = TypeVar("E", bound="FieldError")


class TorchrtError(Exception):
    """The root of every error torchrt raises."""


class FieldError(TorchrtError, ValueError):
    """A setting or argument whose value is not what its key expects.

    ``FieldError(problem, key=..., expected=..., got=...)``; the message is
    ``CONTEXT KEY: PROBLEM`` (``problem`` alone without a key), where a
    subclass's ``context`` says where the key was read (``--rdzv-conf ``).
    """

    context: str = ""

    def __init__(self, problem: str, *, key: str | None = None, expected: str | None = None,
                 got: Any = None) -> None:
        self.problem = problem
        self.key = key
        self.expected = expected
        self.got = got
        super().__init__(f"{self.context}{key}: {problem}" if key else problem)

    @classmethod
    def like(cls: type[E], error: FieldError, **context: Any) -> E:
        """This class's error for the same key and problem as ``error`` (another layer's)."""
        return cls(error.problem, key=error.key, expected=error.expected, got=error.got, **context)

    def __reduce__(self) -> tuple[Any, ...]:  # pickles with its fields, whatever a subclass's __init__ takes
        return (_restore, (type(self), self.args, dict(self.__dict__)))


def _restore(cls: type[E], args: tuple[Any, ...], fields: dict[str, Any]) -> E:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class EndpointError(FieldError):
    """An endpoint that is not ``HOST[:PORT]`` (an IPv6 address in brackets); ``reason`` says why."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"bad endpoint {endpoint!r}: {reason}", expected="HOST:PORT", got=endpoint)
        self.endpoint = endpoint
        self.reason = reason


class RendezvousConfigError(RendezvousError, FieldError):
    """A ``--rdzv-conf`` key is unknown or its value is not what it should be."""

    context = "--rdzv-conf "


class CoordinatorUnavailableError(RendezvousConnectionError, TorchrtError):
    """No coordinator answered at the rendezvous endpoint."""


class CoordinatorError(RendezvousError, TorchrtError):
    """The coordinator answered with an error this client has no more specific class for."""


class RunClosedError(RendezvousClosedError, TorchrtError):
    """The rendezvous of this run is closed: the job is over (torchrun's agent then exits)."""


class RoundTimeoutError(RendezvousTimeoutError, TorchrtError):
    """Not enough nodes joined for a round within the join timeout."""


class NodeRejectedError(RendezvousError, TorchrtError):
    """The coordinator refused this node: other run id, bad token, mismatched job shape."""


class OperationForbiddenError(NodeRejectedError):
    """The coordinator refused an op that this connection's role may not send (an observer's
    telemetry, a worker's join): see ``torchrt.contract.ROLE_OPS``."""


class TokenFileError(RendezvousConfigError):
    """The file that should hold the job's token cannot be read or holds no token."""


class ProtocolError(RendezvousConnectionError, TorchrtError):
    """The peer at the endpoint does not speak torchrt's protocol."""


class RoundSupersededError(RendezvousError, TorchrtError):
    """The round a node was about to start was replaced before every participant confirmed it
    (one of them died or left): the node joins the next one instead."""


class BarrierError(DistStoreError, TorchrtError):
    """Not every rank reached a ``torchrt.barrier`` in time (a store error, as torch's own)."""


_BY_CODE: dict[str, type[RendezvousError]] = {
    Code.REJECTED: NodeRejectedError,
    Code.CLOSED: RunClosedError,
    Code.TIMEOUT: RoundTimeoutError,
    Code.PROTOCOL: ProtocolError,
    Code.FORBIDDEN: OperationForbiddenError,
    Code.SUPERSEDED: RoundSupersededError,
}


def error_from_reply(code: str, message: str) -> RendezvousError:
    """Turn an error reply of the coordinator into the matching exception."""
    return _BY_CODE.get(code, CoordinatorError)(message)
