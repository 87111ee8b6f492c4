"""Decision rules of the coordinator, driven with an explicit clock."""

from __future__ import annotations

import pytest

from torchrt.coordinator.membership import Membership, NodeStatus, RoundSettings


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, type: str, **fields) -> None:
        self.events.append((type, fields))

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


def make(min_nodes=1, max_nodes=2, **kw) -> tuple[Membership, Recorder]:
    rec = Recorder()
    m = Membership(RoundSettings(min_nodes=min_nodes, max_nodes=max_nodes, **kw), rec)
    return m, rec


def connect_and_join(m: Membership, node: str, now: float, port: int = 1000) -> None:
    m.connect(node, {"addr": f"10.0.0.{len(m.nodes) + 1}", "device_kind": "cpu"}, now)
    m.join(node, port, now)


def formed(min_nodes: int, max_nodes: int) -> tuple[Membership, Recorder]:
    """Nodes "a" and "b" joined at time 0 and formed round 1."""
    m, rec = make(min_nodes=min_nodes, max_nodes=max_nodes)
    connect_and_join(m, "a", 0.0)
    connect_and_join(m, "b", 0.0)
    assert m.poll(0.0).participants == ("a", "b")
    return m, rec


def test_full_round_completes_at_once_when_max_nodes_joined():
    m, rec = make(min_nodes=2, max_nodes=2)
    connect_and_join(m, "a", 0.0, port=111)
    assert m.poll(0.0) is None
    connect_and_join(m, "b", 0.01)
    r = m.poll(0.01)
    assert r is not None and r.participants == ("a", "b") and r.number == 1
    assert (r.master_addr, r.master_port) == ("10.0.0.1", 111)
    assert r.backend == "gloo"
    assert "round_completed" in rec.types()


def test_first_round_below_max_waits_for_last_call():
    m, _ = make(min_nodes=1, max_nodes=3, last_call_timeout=1.0)
    connect_and_join(m, "a", 0.0)
    assert m.poll(0.5) is None
    connect_and_join(m, "b", 0.7)
    assert m.poll(0.9) is None
    assert m.next_deadline() == pytest.approx(1.0)
    r = m.poll(1.0)
    assert r is not None and r.participants == ("a", "b")


def test_below_min_never_completes_and_times_out():
    m, rec = make(min_nodes=2, max_nodes=2, join_timeout=5.0)
    connect_and_join(m, "a", 0.0)
    assert m.poll(100.0) is None
    assert m.timed_out_joins(4.0) == []
    assert m.timed_out_joins(5.5) == ["a"]
    assert m.nodes["a"].status == NodeStatus.IDLE
    assert "round_timeout" in rec.types()


def test_scale_up_hint_then_reform_without_delay():
    m, _ = make(min_nodes=1, max_nodes=4, last_call_timeout=1.0)
    connect_and_join(m, "a", 0.0)
    assert m.poll(1.0).participants == ("a",)
    assert m.restart_hint("a") == 0
    connect_and_join(m, "b", 2.0)
    assert m.poll(2.0) is None, "must wait for the running participant to rejoin"
    assert m.restart_hint("a") == 1
    m.join("a", 1000, 2.2)
    r = m.poll(2.2)  # everybody expected is here: no last call
    assert r is not None and r.number == 2 and r.participants == ("a", "b")
    assert m.restart_hint("a") == 0 and m.restart_hint("b") == 0


def test_spares_do_not_disturb_a_full_round():
    m, _ = make(min_nodes=1, max_nodes=2)
    connect_and_join(m, "a", 0.0)
    connect_and_join(m, "b", 0.0)
    assert m.poll(0.0).world_size == 2
    connect_and_join(m, "c", 1.0)
    assert m.poll(100.0) is None
    assert m.restart_hint("a") == 0
    m.fail("b", "connection lost", 101.0)
    assert m.restart_hint("a") == 1
    m.join("a", 1000, 101.1)
    r = m.poll(101.1)
    assert r is not None and r.participants == ("a", "c"), "previous participants first, then spares"


def test_dead_participant_triggers_reform_with_survivors():
    m, rec = formed(min_nodes=1, max_nodes=2)
    m.heartbeat("a", 2.0)
    assert m.expire(2.5, 3.0) == ["b"]
    assert m.nodes["b"].status == NodeStatus.DEAD
    assert m.restart_hint("a") >= 1
    m.join("a", 1000, 3.1)
    r = m.poll(3.1)
    assert r is not None and r.participants == ("a",) and r.number == 2
    dead = [f for t, f in rec.events if t == "node_dead"]
    assert dead and dead[0]["node"] == "b" and "heartbeat" in dead[0]["reason"]


def test_reform_waits_for_live_participants_until_rejoin_timeout():
    m, _ = make(min_nodes=1, max_nodes=3, rejoin_timeout=10.0)
    for n in "abc":
        connect_and_join(m, n, 0.0)
    m.poll(0.0)
    m.join("a", 1000, 1.0)  # a's workers crashed; b and c are alive but slow
    assert m.poll(1.0) is None
    m.join("b", 1000, 2.0)
    assert m.poll(5.0) is None
    r = m.poll(11.0)
    assert r is not None and r.participants == ("a", "b")
    assert m.nodes["c"].status == NodeStatus.IDLE
    assert m.restart_hint("c") == 1, "a node dropped from the new round must be told to come back"


def test_all_participants_agree_on_round_number_after_restart():
    m, rec = formed(min_nodes=2, max_nodes=2)
    m.join("b", 1000, 1.0)
    assert m.poll(1.0) is None, "a is still in round 1: round 2 may not complete without it"
    m.join("a", 1000, 1.5)
    r = m.poll(1.5)
    assert r.number == 2
    assert {m.nodes[p].round for p in r.participants} == {2}
    assert "restart" in rec.types()


def test_graceful_leave_and_close():
    m, rec = formed(min_nodes=1, max_nodes=2)
    m.leave("a", 1.0)
    assert m.restart_hint("b") == 0, "a graceful leave is not a failure"
    connect_and_join(m, "c", 2.0)
    assert m.close("a", 2.5) == ["c"]
    assert m.closed and m.poll(3.0) is None
    assert "rendezvous_closed" in rec.types()


def test_backend_is_nccl_only_when_every_node_has_cuda():
    m, _ = make(min_nodes=2, max_nodes=2)
    m.connect("a", {"addr": "x", "device_kind": "cuda", "device_count": 8}, 0.0)
    m.connect("b", {"addr": "y", "device_kind": "cpu", "device_count": 2}, 0.0)
    m.join("a", 1, 0.0)
    m.join("b", 1, 0.0)
    assert m.poll(0.0).backend == "gloo"
    m2, _ = make(min_nodes=1, max_nodes=1)
    m2.connect("a", {"addr": "x", "device_kind": "cuda", "device_count": 8}, 0.0)
    m2.join("a", 1, 0.0)
    assert m2.poll(0.0).backend == "nccl"


@pytest.mark.parametrize("nodes, expected", [
    # each node: (hostname, device_count, nproc)
    ([("h1", 8, 8), ("h2", 8, 4)], "nccl"),
    ([("h1", 1, 2)], "gloo"),                  # two workers would share one GPU
    ([("h1", 8, 2), ("h1", 8, 2)], "gloo"),    # two agents on one host: both would take cuda:0 and cuda:1
    ([("h1", 2, None), ("h2", 2, None)], "nccl"),  # nproc unknown (not a torchrun agent): one device is enough
])
def test_auto_backend_is_nccl_only_when_every_worker_gets_a_gpu_of_its_own(nodes, expected):
    m, _ = make(min_nodes=len(nodes), max_nodes=len(nodes))
    for i, (host, count, nproc) in enumerate(nodes):
        m.connect(f"n{i}", {"addr": f"10.0.0.{i}", "hostname": host, "device_kind": "cuda", "device_count": count,
                            "nproc": nproc}, 0.0)
        m.join(f"n{i}", 1, 0.0)
    assert m.poll(0.0).backend == expected
