"""The monitor's typed errors; the API turns each into its HTTP status (monitor.api).

* :class:`QueryError` (400): a request value that is not what its key expects; ``key`` names it;
* :class:`NotFoundError` (404): a dump or a dataset the job does not have;
* :class:`NotLiveError` (409): an action (a stack dump) asked of a replayed run.

All of them are :class:`~torchrt.errors.TorchrtError`; ``monitor.sources`` re-exports them.
"""

from __future__ import annotations

from torchrt.errors import FieldError, TorchrtError

__all__ = ["NotFoundError", "NotLiveError", "QueryError"]


class QueryError(FieldError):
    """A query parameter (or body field) of a monitor request that is not what its key expects."""


class NotFoundError(TorchrtError, LookupError):
    """Something a request names (a stack dump, a dataset) that the job does not have."""


class NotLiveError(TorchrtError):
    """An action that needs a running job (a stack dump), asked of a replayed run directory."""
