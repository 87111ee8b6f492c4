"""A formed round starts only once every participant confirmed it (torchrt/coordinator/confirm.py).

A node that joins and vanishes (a fake join over a raw socket, an agent SIGKILLed right after
joining) must never stall the job: the survivors re-form and finish. The decision logic is
tested with explicit times; the rest against a real coordinator and real torchrun.
"""

from __future__ import annotations

import json
import socket

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters

from torchrt.contract import PROTOCOL_VERSION, Op, Role
from torchrt.coordinator import Coordinator, CoordinatorConfig
from torchrt.coordinator.confirm import Confirmations
from torchrt.errors import RoundSupersededError
from torchrt.rendezvous import create_handler

from tests.agents import Agent
from tests.helpers import events, free_port, node_client, wait_until


# ------------------------------------------------------------------ decision logic
def test_a_round_is_confirmed_when_every_participant_confirmed_it():
    c = Confirmations(timeout=5)
    c.open(3, ["a", "b"], now=100.0)
    assert c.confirm("a", 3) is False and c.waiting() == ("a",)
    assert c.confirm("b", 3) is True
    assert c.number is None and c.waiting() == ()


def test_a_confirmation_of_another_round_or_by_a_stranger_is_refused():
    c = Confirmations(timeout=5)
    c.open(3, ["a", "b"], now=100.0)
    with pytest.raises(LookupError):
        c.confirm("a", 2)
    with pytest.raises(LookupError):
        c.confirm("intruder", 3)
    c.confirm("a", 3)
    assert c.cancel() == ("a",)
    with pytest.raises(LookupError):
        c.confirm("b", 3)


def test_participants_that_do_not_confirm_in_time_are_late():
    c = Confirmations(timeout=5)
    c.open(1, ["a", "b", "c"], now=100.0)
    c.confirm("b", 1)
    assert c.late(104.9) == ()
    assert c.late(105.0) == ("a", "c")


# ------------------------------------------------------------------ real coordinator
def raw_join(endpoint: str, node_id: str, run_id: str, nnodes: tuple[int, int], **job: float) -> socket.socket:
    """An intruder speaking the protocol by hand: hello as a node, join, and nothing more."""
    host, port = endpoint.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    stream = sock.makefile("rwb")
    stream.write(json.dumps({"op": Op.HELLO, "id": 1, "version": PROTOCOL_VERSION, "role": Role.NODE,
                             "run_id": run_id, "node_id": node_id, "info": {"addr": "127.0.0.1"},
                             "job": {"min_nodes": nnodes[0], "max_nodes": nnodes[1], **job}}).encode() + b"\n")
    stream.flush()
    assert json.loads(stream.readline())["ok"]
    stream.write(json.dumps({"op": Op.JOIN, "id": 2, "master_port": free_port()}).encode() + b"\n")
    stream.flush()
    return sock


def test_handlers_do_not_start_a_round_whose_participant_never_confirms(tmp_path):
    """A participant that stays connected (heartbeats are not due for a minute) but never
    confirms is declared dead after the confirmation timeout; within the same
    ``next_rendezvous()`` call the real node gets the next round, without the silent one."""
    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0, confirm_timeout_s=3.0))
    coordinator.start()
    silent = raw_join(coordinator.endpoint, "silent", "job", (1, 2),
                      last_call_timeout=30, heartbeat_timeout=60)
    handler = create_handler(RendezvousParameters("torchrt", coordinator.endpoint, "job", 1, 2, is_host="false"))
    try:
        info = handler.next_rendezvous()
        assert info.world_size == 1
        rounds = events(tmp_path / "run", "round_completed")
        assert [r["participants"] for r in rounds] == [["silent", handler.node_id], [handler.node_id]]
        dead = events(tmp_path / "run", "node_dead")
        assert [e["node"] for e in dead] == ["silent"]
        assert "did not confirm round 1 within 3s" in dead[0]["reason"]
    finally:
        handler.shutdown()
        silent.close()
        coordinator.stop()


def test_confirming_a_round_that_was_replaced_is_refused(coordinator):
    node = node_client(coordinator.endpoint, "n0", run_id="job")
    try:
        number = node.request(Op.JOIN, master_port=free_port(), timeout=10)["round"]
        with pytest.raises(RoundSupersededError, match=f"round {number + 1} is not the round"):
            node.request(Op.READY, round=number + 1, timeout=10)
        assert node.request(Op.READY, round=number, timeout=10)["ok"]
    finally:
        node.close()


def test_a_join_that_vanishes_does_not_stall_a_real_torchrun_job(coordinator, tmp_path):
    """The intruder joins while the job runs (scale-up room: 1:2 nodes), the round with it forms,
    then its connection drops before any agent started workers for that round."""
    run_dir, result = tmp_path / "run", tmp_path / "result"
    result.mkdir()
    agent = Agent(coordinator.endpoint, "1:2", run_dir, result, run_id="vanish", conf={"is_host": "false"},
                  env={"STEPS": "40", "STEP_SECONDS": "0.05"})
    try:
        wait_until(lambda: len(events(run_dir, "worker_started")) == 2, 90, "the job's workers")
        intruder = raw_join(coordinator.endpoint, "intruder", "vanish", (1, 2))
        wait_until(lambda: any("intruder" in e["participants"] for e in events(run_dir, "round_completed")),
                   30, "a round with the intruder")
        intruder.close()
        assert agent.wait(90) == 0
        rounds = events(run_dir, "round_completed")
        assert "intruder" not in rounds[-1]["participants"]
        started = {e["round"] for e in events(run_dir, "worker_started")}
        assert rounds[-2]["round"] not in started, "workers were started for the round the intruder was in"
        assert json.loads((result / "rank0.json").read_text())["round"] == rounds[-1]["round"]
    finally:
        agent.close()
