"""The coordinator: the job's single source of truth for membership and rounds.

``Coordinator`` (server.py) is the process side, ``CoordinatorClient``
(client.py) the peer side, ``Membership`` (membership.py) the decision logic and
run_dir.py the on-disk record that a monitor reads live or replays.
"""

from torchrt.coordinator.client import CoordinatorClient, ping
from torchrt.coordinator.membership import Membership, NodeStatus, Round, RoundSettings
from torchrt.coordinator.run_dir import EventLog, read_events
from torchrt.coordinator.server import Coordinator, CoordinatorConfig

__all__ = [
    "Coordinator",
    "CoordinatorClient",
    "CoordinatorConfig",
    "EventLog",
    "Membership",
    "NodeStatus",
    "Round",
    "RoundSettings",
    "ping",
    "read_events",
]
