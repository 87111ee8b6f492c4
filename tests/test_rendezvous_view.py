"""The rendezvous part of the job view: who arrived when in each round, from Membership's own events."""

from __future__ import annotations

from typing import Any

from torchrt.coordinator.membership import Membership, RoundSettings
from torchrt.view.rendezvous import LISTED, RendezvousFold


class Record:
    """Membership's events, stamped with a time the test moves, folded as the coordinator would."""

    def __init__(self) -> None:
        self.fold = RendezvousFold()
        self.now = 100.0

    def __call__(self, type: str, **fields: Any) -> None:
        self.fold.apply({"ts": self.now, "type": type, **fields})


def test_each_round_says_who_arrived_when_and_who_completed_it():
    record = Record()
    membership = Membership(RoundSettings(min_nodes=3, max_nodes=3), record)
    for i, node in enumerate(["a", "b", "c"]):
        record.now = 100.0 + 2 * i
        membership.connect(node, {"addr": f"10.0.0.{i}"}, record.now)
        membership.join(node, 1, record.now)
        membership.poll(record.now)
    [formed] = record.fold.rows("rounds")
    assert formed["arrivals"] == {"count": 3, "first": [{"node": "a", "after_s": 0.0}, {"node": "b", "after_s": 2.0},
                                                        {"node": "c", "after_s": 4.0}],
                                  "last": {"node": "c", "after_s": 4.0}}


def test_the_arrivals_of_a_large_round_are_bounded():
    record = Record()
    nodes = [f"n{i:03d}" for i in range(100)]
    membership = Membership(RoundSettings(min_nodes=100, max_nodes=100), record)
    for i, node in enumerate(nodes):
        record.now = 100.0 + i
        membership.connect(node, {"addr": "10.0.0.1"}, record.now)
        membership.join(node, 1, record.now)
        membership.poll(record.now)
    [formed] = record.fold.rows("rounds")
    arrivals = formed["arrivals"]
    assert arrivals["count"] == 100 and len(arrivals["first"]) == LISTED
    assert arrivals["last"] == {"node": "n099", "after_s": 99.0}
    assert record.fold.snapshot()["current"]["arrivals"]["last"]["node"] == "n099"


def test_a_node_already_waiting_when_its_round_starts_arrived_at_the_start_not_before():
    # The Rounds page read "vm-5594-bc6bbe +-174 µs": the coordinator stamps each event as it logs it,
    # so the join that started a round is stamped a little before the round's start.
    record = Record()

    def stamped(type: str, **fields: Any) -> None:  # each event a millisecond after the one before
        record.now += 0.001
        record(type, **fields)

    membership = Membership(RoundSettings(min_nodes=2, max_nodes=2), stamped)
    for node in ("a", "b"):
        membership.connect(node, {"addr": "10.0.0.1"}, record.now)
    membership.join("a", 1, record.now)
    record.now += 2.0
    membership.join("b", 1, record.now)
    membership.poll(record.now)
    [formed] = record.fold.rows("rounds")
    first, last = formed["arrivals"]["first"]
    assert (first["node"], first["after_s"]) == ("a", 0.0)
    assert last["node"] == "b" and last["after_s"] > 0
