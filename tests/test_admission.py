"""Admission to the coordinator's control port (torchrt.coordinator.admission), over real sockets.

Before its hello a connection has a short deadline, a small line limit and a capped number of
peers; a full file table makes accept back off and warn once per interval instead of spinning;
a peer that does not read what it is sent is dropped once its unsent output passes a bound; and
both listening sockets bind the host they were given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from torchrt.contract import PROTOCOL_VERSION, Code, Op, Role
from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig, ping
from torchrt.coordinator.admission import AdmissionLimits
from torchrt.errors import FieldError

from tests.agents import REPO, Agent
from tests.helpers import form_round, node_client, wait_until


@contextlib.contextmanager
def running(tmp_path: Path, **limits) -> Coordinator:
    c = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0, run_id="job",
                                      admission=AdmissionLimits(**limits)))
    c.start()
    try:
        yield c
    finally:
        c.stop()


def dial(endpoint: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = endpoint.rsplit(":", 1)
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting, so that the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return sock


def line(message: dict) -> bytes:
    return json.dumps(message).encode() + b"\n"


def hello(role: Role) -> bytes:
    return line({"op": Op.HELLO.value, "id": 0, "version": PROTOCOL_VERSION, "role": role.value, "run_id": "job"})


def until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the coordinator sends until it closes the connection; fails if it stays open."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(1 << 16):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"the coordinator kept the connection open for {timeout}s") from None
    except ConnectionResetError:
        pass
    return received


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(10)


# ------------------------------------------------------------ before the hello
def test_a_connection_without_a_hello_is_closed_at_its_deadline(tmp_path):
    with running(tmp_path, hello_timeout_s=0.5) as c:
        watcher = CoordinatorClient(c.endpoint, role=Role.OBSERVER, run_id="job")
        watcher.connect(timeout=10)  # said its hello first: the deadline no longer applies to it
        idle, dribbling = dial(c.endpoint), dial(c.endpoint)
        dribbling.sendall(b'{"op": "hel')  # a line in progress does not extend the deadline
        started = time.monotonic()
        assert until_closed(idle, 10) == b""
        assert until_closed(dribbling, 10) == b""
        assert 0.3 < time.monotonic() - started < 5
        assert watcher.request(Op.PING, timeout=10)["version"] == PROTOCOL_VERSION
        watcher.close()


def test_a_long_line_before_hello_is_refused_and_after_hello_allowed(tmp_path):
    with running(tmp_path, hello_timeout_s=1) as c:
        junk = dial(c.endpoint)
        junk.sendall(b"x" * (100 * 1024))  # no newline: the coordinator must not wait for one
        reply = json.loads(until_closed(junk, 10))
        assert reply["code"] == Code.PROTOCOL and "longer than 65536 bytes" in reply["error"]
        worker = CoordinatorClient(c.endpoint, role=Role.OBSERVER, run_id="job")
        worker.connect(timeout=10)
        assert worker.request(Op.PING, padding="y" * (2 << 20), timeout=10)["ok"]  # a 2 MiB line
        worker.close()


def test_a_refused_connection_keeps_its_slot_until_its_deadline(tmp_path):
    # A client that retries junk as soon as it is closed gets one try per deadline, not thousands.
    with running(tmp_path, hello_timeout_s=1) as c:
        junk = dial(c.endpoint)
        started = time.monotonic()
        junk.sendall(b"not json\n")
        reply = json.loads(junk.makefile("rb").readline())
        assert reply["code"] == Code.PROTOCOL, reply
        assert is_open(junk), "refused, but held"
        assert until_closed(junk, 10) == b""
        assert time.monotonic() - started > 0.8


@pytest.mark.parametrize("junk", [b"not json\n", line({"op": Op.HELLO.value, "id": 0, "version": PROTOCOL_VERSION + 1,
                                                          "role": Role.NODE.value, "run_id": "job"})])
def test_a_refused_hello_is_answered_late_and_an_accepted_one_at_once(tmp_path, junk):
    # A junk client that leaves as soon as it is answered gets one try per refusal_delay_s: it
    # used to be answered at once and came back thousands of times a second.
    with running(tmp_path, refusal_delay_s=2.0, hello_timeout_s=10) as c:
        good, bad = dial(c.endpoint), dial(c.endpoint)
        started = time.monotonic()
        good.sendall(hello(Role.OBSERVER))
        accepted = json.loads(good.makefile("rb").readline())
        answered_good = time.monotonic() - started
        started = time.monotonic()
        bad.sendall(junk)
        refused = json.loads(bad.makefile("rb").readline())
        answered_bad = time.monotonic() - started
        assert accepted["ok"] is True and answered_good < 2.0
        assert refused["ok"] is False and refused["code"] == Code.PROTOCOL and answered_bad >= 2.0
        good.close()
        bad.close()


def test_a_refused_connection_whose_peer_leaves_frees_its_slot_at_once(tmp_path):
    with running(tmp_path, max_pending=1, max_crowded=1, hello_timeout_s=30, crowded_hello_timeout_s=30) as c:
        held = dial(c.endpoint)
        held.sendall(b"not json\n")
        held.makefile("rb").readline()  # refused: holds one of the two slots for 30 s
        leaving = dial(c.endpoint)
        leaving.sendall(b"not json\n")
        leaving.close()  # holds the other until the coordinator sees it leave
        # a third client gets the freed slot: had the leaving one kept it, the two slots were full for 30 s
        assert ping(c.endpoint, timeout=10) is not None
        held.close()


def test_beyond_the_cap_connections_get_a_short_deadline_and_a_real_client_gets_in(tmp_path):
    with running(tmp_path, max_pending=8, max_crowded=2, hello_timeout_s=60, crowded_hello_timeout_s=0.3) as c:
        idle = [dial(c.endpoint) for _ in range(8)]  # pending with the full deadline
        crowded = [dial(c.endpoint) for _ in range(2)]  # accepted while 8 are pending: 0.3 s
        client = CoordinatorClient(c.endpoint, role=Role.OBSERVER, run_id="job")
        client.connect(timeout=10)  # waits in the backlog until a crowded slot is free, then is in
        assert client.request(Op.PING, timeout=10)["ok"]
        for sock in crowded:
            assert until_closed(sock, 10) == b""
        assert all(is_open(sock) for sock in idle)
        client.close()
        for sock in idle:
            sock.close()


def test_a_burst_of_real_clients_beyond_the_cap_all_get_in(tmp_path):
    # 40 clients dial at once against caps of 8 + 2: the others wait in the backlog, and each
    # one accepted says its hello well within the crowded deadline.
    with running(tmp_path, max_pending=8) as c:
        answers: list[bool] = []

        def one() -> None:
            client = CoordinatorClient(c.endpoint, role=Role.OBSERVER, run_id="job")
            client.connect(timeout=20)
            answers.append(client.request(Op.PING, timeout=20)["ok"])
            client.close()

        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert answers == [True] * 40


@pytest.mark.parametrize("limits, key", [
    ({"hello_timeout_s": float("inf")}, "hello_timeout_s"),
    ({"hello_timeout_s": 0}, "hello_timeout_s"),
    ({"crowded_hello_timeout_s": float("nan")}, "crowded_hello_timeout_s"),
    ({"crowded_hello_timeout_s": 9}, "crowded_hello_timeout_s"),
    ({"max_pending": 0}, "max_pending"),
    ({"refusal_delay_s": -1}, "refusal_delay_s"),
    ({"hello_line_bytes": 1 << 24}, "hello_line_bytes"),
])
def test_bad_limits_are_refused_naming_the_key(limits, key):
    with pytest.raises(FieldError, match=f"^{key}: expected"):
        AdmissionLimits(**limits)


# ------------------------------------------------------------ output bound
def test_a_client_that_never_reads_its_replies_is_dropped(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="torchrt.coordinator.admission")
    bound = 256 * 1024
    with running(tmp_path, max_output_bytes=bound) as c:
        sock = dial(c.endpoint, rcvbuf=4096)
        sock.sendall(hello(Role.OBSERVER))
        requests = b"".join(line({"op": Op.STATUS.value, "id": i, "events": 100}) for i in range(1, 20001))
        # the replies (~20,000 x 2 KB) would outgrow the bound many times over; we never read them
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(requests)
        record = wait_until(lambda: [r for r in caplog.records if "does not read" in r.getMessage()], 30,
                            "the coordinator to drop the client")[0]
        unsent = record.args[1]
        assert bound < unsent < bound + 64 * 1024, "dropped as soon as the bound was passed"
        until_closed(sock, 10)
        assert ping(c.endpoint, timeout=10) is not None, "the coordinator serves the others"
        sock.close()


def test_a_subscriber_that_never_reads_is_dropped_while_events_flow(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="torchrt.coordinator.admission")
    bound = 256 * 1024
    with running(tmp_path, max_output_bytes=bound) as c:
        lazy = dial(c.endpoint, rcvbuf=4096)
        lazy.sendall(hello(Role.OBSERVER) + line({"op": Op.SUBSCRIBE.value, "id": 1, "since": 0}))
        member = node_client(c.endpoint, "n0")
        assert form_round(member) == 1
        rank0 = CoordinatorClient(c.endpoint, role=Role.WORKER, run_id="job", hello={"info": {
            "rank": 0, "local_rank": 0, "world_size": 1, "local_world_size": 1, "node_id": "n0", "round": 1,
            "pid": 4242, "backend": "gloo"}})
        rank0.connect(timeout=10)
        preview = {"type": "data_preview", "dataset": "d", "epoch": 0, "index": 0, "image": "z" * 100_000}
        for _ in range(10):  # 100 previews of 100 kB, each pushed to the subscriber: 10 MB it never reads
            rank0.request(Op.TELEMETRY, events=[preview] * 10, timeout=30)
        dropped = wait_until(lambda: [r for r in caplog.records if "does not read" in r.getMessage()], 30,
                             "the coordinator to drop the subscriber")
        assert str(lazy.getsockname()) in dropped[0].getMessage()
        assert rank0.request(Op.PING, timeout=10)["ok"], "the others carry on"
        rank0.close()
        member.close()
        lazy.close()


# ------------------------------------------------------------ listening sockets
def test_both_listening_sockets_bind_the_given_host_only(tmp_path):
    c = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", host="127.0.0.2", port=0))
    c.start()
    try:
        listening = {(conn.laddr.ip, conn.laddr.port) for conn in psutil.Process().net_connections("tcp")
                     if conn.status == psutil.CONN_LISTEN and conn.laddr.port in (c.port, c.store_port)}
        assert listening == {("127.0.0.2", c.port), ("127.0.0.2", c.store_port)}
    finally:
        c.stop()


# ------------------------------------------------------------ descriptor exhaustion
COORDINATOR_UNDER_ULIMIT = """
import logging, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
from torchrt.coordinator import Coordinator, CoordinatorConfig
from torchrt.coordinator.admission import AdmissionLimits
# the cap above the descriptor limit: the descriptors run out, and the accept loop is under test
c = Coordinator(CoordinatorConfig(run_dir=Path(sys.argv[1]), port=0,
                                  admission=AdmissionLimits(max_pending=4096, hello_timeout_s=2.0)))
c.start()
print(c.endpoint, flush=True)
sys.stdin.read()
c.stop()
"""


@pytest.mark.slow
def test_descriptor_exhaustion_backs_off_quietly_and_a_real_job_gets_in(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"this test needs 1,100 sockets; the hard open-file limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096) if hard == resource.RLIM_INFINITY
                                                else min(max(soft, 4096), hard), hard))
    log_path = tmp_path / "coordinator.log"
    results = tmp_path / "results"
    results.mkdir()
    idle: list[socket.socket] = []
    agents: list[Agent] = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", COORDINATOR_UNDER_ULIMIT, str(tmp_path / "run")],
                                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint, f"the coordinator did not start: {log_path.read_text()[-3000:]}"
        host, port = endpoint.rsplit(":", 1)
        for _ in range(1100):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((host, int(port)))
            idle.append(sock)
        coordinator = psutil.Process(proc.pid)
        wait_until(lambda: coordinator.num_fds() >= 900, 30, "the coordinator to hold 900 of its 1024 descriptors")
        agents = [Agent(endpoint, "2", tmp_path / "agent-run", results, nproc=1, conf={"is_host": "false"})
                  for _ in range(2)]
        for agent in agents:
            assert agent.wait(120) == 0, agent.log()
        assert sorted(p.name for p in results.glob("rank*.json")) == ["rank0.json", "rank1.json"]
        text = log_path.read_text()
        assert len(text) < 100_000, f"{len(text)} bytes of log; it starts with:\n{text[:3000]}"
        assert "Traceback" not in text, text[:3000]
        warnings = text.count("cannot accept connections")
        assert 1 <= warnings <= 3, f"{warnings} warnings in {len(text)} bytes of log"
    finally:
        for sock in idle:
            sock.close()
        for agent in agents:
            agent.close()
        proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
