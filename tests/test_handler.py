"""The rendezvous handler against a real coordinator over TCP, nodes in threads."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.api import RendezvousClosedError, RendezvousTimeoutError

from launch.status import fetch_status, render_status
from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig
from torchrt.errors import NodeRejectedError, RendezvousConfigError
from torchrt.contract import PROTOCOL_VERSION
from torchrt.rendezvous import create_handler
from torchrt.rendezvous.handler import TorchrtRendezvousHandler

from tests.helpers import events, free_port, wait_until


def handler(endpoint: str, min_nodes=1, max_nodes=1, run_id="job", **conf) -> TorchrtRendezvousHandler:
    conf.setdefault("is_host", "false")
    return create_handler(RendezvousParameters("torchrt", endpoint, run_id, min_nodes, max_nodes, **conf))


def rendezvous_all(handlers) -> list:
    results: list = [None] * len(handlers)

    def go(i):
        try:
            results[i] = handlers[i].next_rendezvous()
        except Exception as e:  # surfaced by the assertion below
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(handlers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_four_nodes_form_one_round_and_share_the_round_store(coordinator):
    hs = [handler(coordinator.endpoint, 4, 4) for _ in range(4)]
    infos = rendezvous_all(hs)
    assert sorted(i.rank for i in infos) == [0, 1, 2, 3]
    assert {i.world_size for i in infos} == {4}
    assert len({(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos}) == 1
    infos[0].store.set("hello", "from rank")
    assert infos[3].store.get("hello") == b"from rank"
    assert {h.round["round"] for h in hs} == {1}
    completed = events(coordinator.config.run_dir, "round_completed")
    assert len(completed) == 1 and completed[0]["last_call_s"] == 0.0, "a full round must not wait"
    for h in hs:
        h.shutdown()


def test_scale_up_is_announced_and_next_round_includes_newcomer(coordinator):
    a = handler(coordinator.endpoint, 1, 2, last_call_timeout="0")
    assert a.next_rendezvous().world_size == 1
    assert a.num_nodes_waiting() == 0
    b = handler(coordinator.endpoint, 1, 2)
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("b", b.next_rendezvous()))
    t.start()
    wait_until(lambda: a.num_nodes_waiting() > 0, 10, "the scale-up push to reach node a")
    info_a = a.next_rendezvous()
    t.join(10)
    assert info_a.world_size == 2 and results["b"].world_size == 2
    assert a.round["round"] == b.round["round"] == 2
    assert a.num_nodes_waiting() == 0
    b.shutdown()
    a.shutdown()


def test_silent_node_is_declared_dead_and_survivor_told_to_reform(tmp_path):
    port = free_port()
    survivor = handler(f"127.0.0.1:{port}", 1, 2, is_host="true", heartbeat_timeout="2.0",
                       heartbeat_interval="0.2", last_call_timeout="5", run_dir=str(tmp_path))
    silent = CoordinatorClient(f"127.0.0.1:{port}", role="node", run_id="job", hello={
        "node_id": "silent", "info": {"addr": "127.0.0.1"}, "job": {"min_nodes": 1, "max_nodes": 2}})
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("s", survivor.next_rendezvous()))
    t.start()
    wait_until(lambda: survivor.hosted_coordinator is not None, 10, "the survivor to host the coordinator")
    silent.connect(timeout=5)  # no heartbeat_interval: this node will go quiet
    reply = silent.request("join", master_port=1, timeout=10)
    assert reply["world_size"] == 2
    t.join(60)
    assert not t.is_alive(), "the survivor's rendezvous did not end"
    # The round with the silent node never starts (it does not confirm it); the survivor's same
    # call ends in the next round, once the silent node was declared dead.
    assert results["s"].world_size == 1 and survivor.round["round"] == 2
    dead = events(tmp_path, "node_dead")
    assert [e["node"] for e in dead] == ["silent"] and "heartbeat" in dead[0]["reason"]
    silent.close()
    survivor.shutdown()


def test_unknown_rdzv_conf_key_lists_accepted_keys():
    with pytest.raises(RendezvousConfigError) as e:
        handler("127.0.0.1:1", heartbeat_timout="3")
    assert "heartbeat_timout" in str(e.value) and "heartbeat_timeout" in str(e.value)


@pytest.mark.parametrize("conf,needle", [
    ({"pg_backend": "mpi"}, "pg_backend"),
    ({"heartbeat_timeout": "0.1", "heartbeat_interval": "0.5"}, "heartbeat_timeout"),
    ({"join_timeout": "abc"}, "join_timeout"),
])
def test_bad_rdzv_conf_values_are_named(conf, needle):
    with pytest.raises(RendezvousConfigError, match=needle):
        handler("127.0.0.1:1", **conf)


def test_foreign_run_id_is_rejected_with_both_names(coordinator):
    first = handler(coordinator.endpoint, run_id="alpha")
    first.next_rendezvous()
    intruder = handler(coordinator.endpoint, run_id="beta")
    with pytest.raises(NodeRejectedError) as e:
        intruder.next_rendezvous()
    assert "'beta'" in str(e.value) and "'alpha'" in str(e.value)
    first.shutdown()


def test_token_must_match(tmp_path):
    c = Coordinator(CoordinatorConfig(run_dir=tmp_path, port=0, token="s3cret"))
    c.start()
    try:
        with pytest.raises(NodeRejectedError, match="token"):
            handler(c.endpoint, token="wrong").next_rendezvous()
        with pytest.raises(NodeRejectedError, match="token"):
            handler(c.endpoint).next_rendezvous()
        ok = handler(c.endpoint, token="s3cret")
        assert ok.next_rendezvous().world_size == 1
        ok.shutdown()
    finally:
        c.stop()


def test_mismatched_nnodes_is_rejected(coordinator):
    a = handler(coordinator.endpoint, 1, 2, last_call_timeout="0")
    a.next_rendezvous()
    with pytest.raises(NodeRejectedError, match="1:3"):
        handler(coordinator.endpoint, 1, 3).next_rendezvous()
    a.shutdown()


def test_join_timeout_names_the_waiting_node(coordinator):
    lonely = handler(coordinator.endpoint, 2, 2, join_timeout="0.3")
    with pytest.raises(RendezvousTimeoutError) as e:
        lonely.next_rendezvous()
    assert lonely.node_id in str(e.value) and "2" in str(e.value)


def test_shutdown_closes_the_rendezvous_for_everybody(coordinator):
    a, b = handler(coordinator.endpoint, 1, 2, last_call_timeout="0"), handler(coordinator.endpoint, 1, 2)
    a.next_rendezvous()
    a.shutdown()
    wait_until(lambda: events(coordinator.config.run_dir, "rendezvous_closed"), 5, "the close event")
    with pytest.raises(RendezvousClosedError):
        b.next_rendezvous()


def test_status_shows_nodes_rounds_and_events(coordinator):
    hs = [handler(coordinator.endpoint, 2, 2) for _ in range(2)]
    rendezvous_all(hs)
    reply = fetch_status(coordinator.endpoint)
    text = render_status(reply)
    assert "round 1: world size 2, backend gloo" in text
    for h in hs:
        assert h.node_id in text
    assert "round_completed" in text
    for h in hs:
        h.shutdown()


def test_garbage_and_wrong_version_get_protocol_errors(coordinator):
    client = CoordinatorClient(coordinator.endpoint, role="node", hello={"version": PROTOCOL_VERSION + 1})
    with pytest.raises(Exception, match="protocol version"):
        client.connect(timeout=5)


def test_a_stale_token_in_the_environment_does_not_reach_workers(coordinator, monkeypatch):
    # Regression: a TORCHRT_TOKEN left in the agent's environment (here by an earlier job in the
    # same process) was inherited by workers, whose telemetry connection was then rejected.
    monkeypatch.setenv("TORCHRT_TOKEN", "stale")
    h = handler(coordinator.endpoint)
    h.next_rendezvous()
    assert "TORCHRT_TOKEN" not in os.environ
    assert os.environ["TORCHRT_ROUND"] == "1" and os.environ["TORCHRT_BACKEND"] == "gloo"
    h.shutdown()


def test_subscribers_get_past_and_live_events_pushed(coordinator):
    pushed: list[dict] = []
    got_round = threading.Event()

    def on_push(message):
        if message.get("push") == "event":
            pushed.append(message["event"])
            if message["event"]["type"] == "round_completed":
                got_round.set()

    watcher = CoordinatorClient(coordinator.endpoint, role="observer", on_push=on_push)
    watcher.connect(timeout=5)
    backlog = watcher.request("subscribe", since=0)["events"]
    assert backlog[0]["type"] == "coordinator_started"
    h = handler(coordinator.endpoint)
    h.next_rendezvous()
    assert got_round.wait(5), "round_completed was not pushed"
    seqs = [e["seq"] for e in backlog + pushed]
    assert seqs == list(range(1, len(seqs) + 1)), "no gap and no repeat between backlog and live events"
    h.shutdown()
    watcher.close()


def test_listen_backlog_survives_asyncio(coordinator):
    # Regression: asyncio.start_server(sock=...) re-listened with its default backlog of 100,
    # and a thousand nodes dialling at once lost connections.
    out = subprocess.run(["ss", "-ltnH", f"sport = :{coordinator.port}"], capture_output=True, text=True).stdout
    assert int(out.split()[2]) >= 4096, out


def test_join_survives_a_dropped_connection(coordinator):
    # Regression: a connection lost while waiting for the round made next_rendezvous raise,
    # and with min = max every other node then waited for the whole join timeout.
    a, b = handler(coordinator.endpoint, 2, 2), handler(coordinator.endpoint, 2, 2)
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("a", a.next_rendezvous()))
    t.start()
    wait_until(lambda: events(coordinator.config.run_dir, "node_waiting"), 5, "node a to wait")
    a._client._sock.shutdown(socket.SHUT_RDWR)  # the network drops a's connection
    wait_until(lambda: len(events(coordinator.config.run_dir, "node_waiting")) == 2, 10, "node a to rejoin")
    info_b = b.next_rendezvous()
    t.join(10)
    assert results["a"].world_size == info_b.world_size == 2
    a.shutdown()
    b.shutdown()


def test_a_coordinator_that_cannot_bind_leaves_nothing_behind(coordinator, tmp_path):
    # Every agent on the endpoint's host tries to host; all but one find the port taken.
    def torchrt_threads() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("torchrt-"))

    before = torchrt_threads()
    second = Coordinator(CoordinatorConfig(run_dir=tmp_path / "second", port=coordinator.port))
    with pytest.raises(OSError):
        second.start()
    assert torchrt_threads() == before


def test_a_scale_up_hint_is_about_the_round_it_was_pushed_for(coordinator):
    """Pushes and the join reply travel on one connection, but the agent's thread reads the round
    later than the reader thread delivers the pushes after it: a hint must name its round, so a
    hint pushed for the previous round is not taken for this one, and one for this round is
    never reset by the join that returned it."""
    a = handler(coordinator.endpoint, 1, 2, last_call_timeout="0")
    a.next_rendezvous()
    number = a.round["round"]
    a._on_push({"push": "state", "round": number - 1, "waiting": 1, "closed": False})
    assert a.num_nodes_waiting() == 0
    a._on_push({"push": "state", "round": number, "waiting": 1, "closed": False})
    assert a.num_nodes_waiting() == 1
    a.shutdown()
