"""The coordinator: the job's single source of truth for membership and rounds.

``Coordinator`` (server.py) is the process side, ``CoordinatorClient``
(client.py) the peer side, ``Membership`` (membership.py) the decision logic and
run_dir.py the on-disk record that a monitor reads live or replays.

Names are imported lazily: importing one module of the package (``membership``,
``run_dir``, as :mod:`torchrt.view` does) does not import the server, which in
turn uses the view.
"""

from __future__ import annotations

from torchrt._lazy import lazy_exports

_EXPORTS = {
    "CoordinatorClient": "client", "ping": "client",
    "Membership": "membership", "NodeStatus": "membership", "Round": "membership", "RoundSettings": "membership",
    "EventLog": "run_dir", "read_events": "run_dir",
    "Coordinator": "server", "CoordinatorConfig": "server",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
