"""The coordinator: the job's single source of truth for membership and rounds.

``Coordinator`` (server.py) is the process side, ``CoordinatorClient``
(client.py) the peer side, ``Membership`` (membership.py) the decision logic and
run_dir.py the on-disk record that a monitor reads live or replays.

Names are imported lazily: importing one module of the package (``membership``,
``run_dir``, as :mod:`torchrt.view` does) does not import the server, which in
turn uses the view.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CoordinatorClient": "client", "ping": "client",
    "Membership": "membership", "NodeStatus": "membership", "Round": "membership", "RoundSettings": "membership",
    "EventLog": "run_dir", "read_events": "run_dir",
    "Coordinator": "server", "CoordinatorConfig": "server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchrt.coordinator' has no attribute {name!r}")
    return getattr(importlib.import_module(f"torchrt.coordinator.{module}"), name)


def __dir__() -> list[str]:
    return __all__
