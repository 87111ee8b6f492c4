"""Round confirmation: a formed round is handed to the agents only once every participant is there.

Why: torchrun's agent, once ``next_rendezvous()`` returned, assigns worker ranks through the
round's store and waits there for every other agent of the round (``_assign_worker_ranks``),
with the store's timeout and without asking the handler anything. A participant that joined
and vanished before that (a fake join, an agent SIGKILLed right after joining) would keep the
survivors there for the whole timeout, even though the coordinator knows at once that the
round is dead and has already opened the next one.

So a join's answer is not the end of a rendezvous. Each handler confirms the round it got
(``ready``, after its bootstrap store is set up) and returns it to its agent only when the
coordinator answers that every participant confirmed it. If the round is replaced first (a
participant died or left, a new round became needed), the waiting confirmations are answered
``superseded`` and those handlers join again, inside the same ``next_rendezvous()`` call:
the agent never sees the dead round. A participant that stays connected but never confirms
(a hung or foreign handler) is declared dead after ``timeout`` seconds, which replaces the
round the same way. What is left is the window between the last confirmation and the agents'
rank exchange (milliseconds), instead of everything from the join on.

Pure logic in the style of :mod:`torchrt.coordinator.membership`: callers pass the time.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class _Open:
    number: int
    participants: tuple[str, ...]
    opened_at: float
    confirmed: set[str] = dataclasses.field(default_factory=set)


class Confirmations:
    """The confirmations of the newest formed round."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._open: _Open | None = None

    def open(self, number: int, participants: list[str] | tuple[str, ...], now: float) -> None:
        """A round formed: nobody has confirmed it yet (an older open round is forgotten)."""
        self._open = _Open(number, tuple(participants), now)

    def confirm(self, node_id: str, number: int) -> bool:
        """``node_id`` confirms round ``number``; True when that makes the round confirmed by all.
        Raises ``LookupError`` when ``number`` is not the round waiting for confirmations."""
        current = self._open
        if current is None or current.number != number or node_id not in current.participants:
            raise LookupError(number)
        current.confirmed.add(node_id)
        if current.confirmed.issuperset(current.participants):
            self._open = None
            return True
        return False

    def waiting(self) -> tuple[str, ...]:
        """Participants that confirmed and wait for the others (to answer them)."""
        current = self._open
        if current is None:
            return ()
        return tuple(p for p in current.participants if p in current.confirmed)

    def cancel(self) -> tuple[str, ...]:
        """The round will not start: forget it; returns who was waiting for it."""
        waiting = self.waiting()
        self._open = None
        return waiting

    def late(self, now: float) -> tuple[str, ...]:
        """Participants that have not confirmed ``timeout`` seconds after the round formed."""
        current = self._open
        if current is None or now - current.opened_at < self.timeout:
            return ()
        return tuple(p for p in current.participants if p not in current.confirmed)

    @property
    def number(self) -> int | None:
        """The round waiting for confirmations, if any."""
        return self._open.number if self._open is not None else None
