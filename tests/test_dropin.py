"""torchrt as a drop-in for torchrun's c10d backend: what c10d users rely on.

``--rdzv-endpoint=HOST:0`` (what ``--standalone`` uses), closing a rendezvous
from a handler that never joined, the workers' bootstrap store (hosted by the
group-rank-0 handler, fresh per round, bound to the node's own address and not
to every interface) and IPv6 endpoints. Handlers run in threads against a real
coordinator over TCP; where the item is about torchrun, real torchrun jobs.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import timedelta

import psutil
import pytest
import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.api import RendezvousClosedError

from torchrt.contract import Env
from torchrt.coordinator import Coordinator, CoordinatorConfig
from torchrt.errors import RendezvousConfigError
from torchrt.protocol import parse_endpoint
from torchrt.rendezvous import create_handler
from torchrt.rendezvous.handler import TorchrtRendezvousHandler

from tests.agents import Agent
from tests.helpers import events, free_port, wait_until


def handler(endpoint: str, min_nodes=1, max_nodes=1, run_id="job", **conf) -> TorchrtRendezvousHandler:
    conf.setdefault("is_host", "false")
    conf.setdefault("connect_timeout", "10")
    return create_handler(RendezvousParameters("torchrt", endpoint, run_id, min_nodes, max_nodes, **conf))


def listening(pid: int, port: int) -> list[str]:
    """The addresses process ``pid`` listens on at TCP ``port``."""
    return [c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def listening_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def ipv6_loopback_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- HOST:0 endpoints
def test_endpoint_port_zero_hosts_on_a_free_port_and_dials_it(tmp_path):
    h = handler("localhost:0", is_host="true", run_dir=str(tmp_path))
    info = h.next_rendezvous()
    try:
        port = h.hosted_coordinator.port
        assert port != 0 and info.world_size == 1
        assert parse_endpoint(os.environ[Env.ENDPOINT]) == ("localhost", port), "workers must dial the bound port"
        assert events(tmp_path, "round_completed")
    finally:
        h.shutdown()


def test_endpoint_port_zero_on_a_node_that_does_not_host_is_a_config_error():
    with pytest.raises(RendezvousConfigError, match=r"127\.0\.0\.1:0.*is_host"):
        handler("127.0.0.1:0", is_host="false")


@pytest.mark.slow
def test_torchrun_with_endpoint_port_zero(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    agent = Agent("127.0.0.1:0", "1", tmp_path / "run", results, conf={"connect_timeout": "10"})
    try:
        assert agent.wait(90) == 0, agent.log()
    finally:
        agent.close()
    ranks = sorted(json.loads(p.read_text())["rank"] for p in results.glob("rank*.json"))
    assert ranks == [0, 1]


# ------------------------------------------------------------- closing without joining
def test_shutdown_of_a_handler_that_never_joined_closes_the_rendezvous(coordinator):
    handler(coordinator.endpoint, 1, 2).shutdown()
    with pytest.raises(RendezvousClosedError):
        handler(coordinator.endpoint, 1, 2).next_rendezvous()


def test_set_closed_of_a_handler_that_never_joined_closes_the_rendezvous(coordinator):
    closer = handler(coordinator.endpoint, 1, 2)
    closer.set_closed()
    assert closer.is_closed()
    with pytest.raises(RendezvousClosedError):
        handler(coordinator.endpoint, 1, 2).next_rendezvous()
    closer.shutdown()


def test_a_fresh_handler_sees_a_rendezvous_that_a_peer_closed(coordinator):
    a = handler(coordinator.endpoint, 1, 2, last_call_timeout="0")
    a.next_rendezvous()
    a.set_closed()
    fresh = handler(coordinator.endpoint, 1, 2)
    assert fresh.is_closed()
    assert fresh.num_nodes_waiting() == 0
    fresh.shutdown()
    a.shutdown()


def test_shutdown_without_a_coordinator_returns_false_quickly(tmp_path):
    # Nothing to close: shutdown must neither host a coordinator nor wait connect_timeout.
    h = handler(f"127.0.0.1:{free_port()}", is_host="true", run_dir=str(tmp_path), connect_timeout="60")
    assert h.shutdown() is False
    assert h.hosted_coordinator is None and h.is_closed()


# ------------------------------------------------------------ workers' bootstrap store
def test_group_rank_zero_hosts_a_fresh_bootstrap_store_per_round_on_its_own_address(coordinator):
    h = handler(coordinator.endpoint, 1, 1)
    assert h.use_agent_store, "workers must connect to the handler's store, not host one"
    first = h.next_rendezvous().bootstrap_store_info
    assert first.master_addr == "127.0.0.1"
    assert listening(os.getpid(), first.master_port) == ["127.0.0.1"]
    worker = dist.TCPStore(first.master_addr, first.master_port, is_master=False, timeout=timedelta(seconds=10))
    worker.set("default_pg/0", "stale")
    second = h.next_rendezvous().bootstrap_store_info
    assert second.master_port != first.master_port
    assert listening(os.getpid(), first.master_port) == [], "the previous round's store must be gone"
    fresh = dist.TCPStore(second.master_addr, second.master_port, is_master=False, timeout=timedelta(seconds=10))
    assert fresh.check(["default_pg/0"]) is False, "a new round starts with no keys"
    h.shutdown()
    assert listening(os.getpid(), second.master_port) == []


def test_other_ranks_host_no_bootstrap_store(coordinator):
    a, b = handler(coordinator.endpoint, 2, 2), handler(coordinator.endpoint, 2, 2)
    before = listening_ports(os.getpid())
    infos = {}
    threads = [threading.Thread(target=lambda h=h: infos.setdefault(h, h.next_rendezvous())) for h in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    store_info = {(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos.values()}
    assert len(store_info) == 1
    (_, port), = store_info
    assert listening(os.getpid(), port) == ["127.0.0.1"]
    assert listening_ports(os.getpid()) - before == {port}, "one store, group rank 0's; rank 1 released its socket"
    for h in (a, b):
        h.shutdown()


@pytest.mark.slow
def test_no_socket_of_a_torchrun_job_listens_on_every_interface(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    agent = Agent(f"127.0.0.1:{free_port()}", "1", tmp_path / "run", results,
                  env={"STEPS": "60", "STEP_SECONDS": "0.05"})
    seen: set[tuple[str, str, int]] = set()  # (process, address, port)

    def sample() -> bool:
        try:
            tree = [psutil.Process(agent.proc.pid), *psutil.Process(agent.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return True
        for proc in tree:
            who = "agent" if proc.pid == agent.proc.pid else f"worker {proc.pid}"
            try:
                seen.update((who, c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="tcp")
                            if c.status == psutil.CONN_LISTEN)
            except psutil.Error:
                pass
        return agent.proc.poll() is not None

    try:
        wait_until(sample, 90, "the job to finish", interval=0.05)
        assert agent.wait(10) == 0, agent.log()
    finally:
        agent.close()
    workers = {p for p, _, _ in seen if p.startswith("worker")}
    assert len(workers) == 2, f"both workers sampled while they ran: {sorted(seen)}"
    wildcard = sorted(s for s in seen if s[1] in ("0.0.0.0", "::", ""))
    assert not wildcard, f"listening on every interface: {wildcard}"


# ------------------------------------------------------------------------------ IPv6
@pytest.mark.skipif(not ipv6_loopback_usable(), reason="::1 is not usable on this machine")
def test_ipv6_endpoint(tmp_path):
    port = free_port()
    h = handler(f"[::1]:{port}", is_host="true", run_dir=str(tmp_path))
    try:
        info = h.next_rendezvous()
        assert h.hosted_coordinator is not None and listening(os.getpid(), port) == ["::1"]
        assert parse_endpoint(os.environ[Env.ENDPOINT]) == ("::1", port)
        assert parse_endpoint(os.environ[Env.STORE])[0] == "::1"
        boot = info.bootstrap_store_info
        assert boot.master_addr == "::1" and listening(os.getpid(), boot.master_port) == ["::1"]
        worker = dist.TCPStore(boot.master_addr, boot.master_port, is_master=False, timeout=timedelta(seconds=10))
        worker.set("k", "v")
        info.store.set("agent", "ok")
        assert info.store.get("agent") == b"ok"
    finally:
        h.shutdown()


def test_signalled_plain_torchrun_agent_leaves_instead_of_dying(coordinator, tmp_path):
    """torchrun skips ``handler.shutdown()`` when a signal stops it; the node must still be
    recorded as leaving (with why), not as dead, and no round may be started for it."""
    import signal

    result = tmp_path / "result"
    result.mkdir()
    agent = Agent(coordinator.endpoint, "1", tmp_path / "run", result, run_id="sig",
                  conf={"is_host": "false"}, env={"STEPS": "1000", "STEP_SECONDS": "0.05"})
    try:
        run_dir = tmp_path / "run"
        wait_until(lambda: len(events(run_dir, "worker_started")) == 2, 90, "both workers to start")
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait(60)
        left = wait_until(lambda: events(run_dir, "node_left"), 10, "the node to leave")
        assert "signal" in left[0]["reason"]
        assert events(run_dir, "node_dead") == []
        assert [e["round"] for e in events(run_dir, "round_started")] == [1]
    finally:
        agent.close()
