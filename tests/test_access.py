"""Who may do what on the coordinator's control port (issue 8, "nothing gets in").

Against a real coordinator over TCP: observers are read-only, only nodes change
membership, a report cannot forge control events (``node_dead``, ``shutdown``,
rounds) nor a commit from a rank other than 0, a worker of another round cannot
report, and ``rank``/``node_id`` come from the worker's hello. Tokens may be any
Unicode text.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from torchrt.contract import EVENTS, PROTOCOL_VERSION, ROLE_OPS, Code, Env, EventType, Op, Origin, Role
from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig, Round
from torchrt.coordinator.access import (
    MAX_RECORDED_REFUSALS,
    MAX_REFUSED_TYPE_CHARS,
    Accepted,
    Refused,
    ReportGate,
    WorkerIdentity,
    forbidden,
    token_matches,
)
from torchrt.errors import NodeRejectedError, OperationForbiddenError, TokenFileError
from torchrt.tokens import resolve_token

from tests.helpers import events, form_round, free_port, node_client, wait_until

UNICODE_TOKEN = "sécret-é€-🔑"


@pytest.fixture
def coordinator(tmp_path):
    c = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0, run_id="job"))
    c.start()
    yield c
    c.stop()


def connect(endpoint: str, role: Role, **kw) -> CoordinatorClient:
    client = CoordinatorClient(endpoint, role=role, run_id="job", **kw)
    client.connect(timeout=10)
    return client


def worker(endpoint: str, rank: int, round_number: int | None, node_id: str | None, **kw) -> CoordinatorClient:
    return connect(endpoint, Role.WORKER, hello={"info": {
        "rank": rank, "local_rank": rank, "world_size": 2, "local_world_size": 2, "node_id": node_id,
        "round": round_number, "pid": 4242, "backend": "gloo"}}, **kw)


def run_dir(coordinator: Coordinator) -> Path:
    return Path(coordinator.config.run_dir)


def logged(coordinator: Coordinator, type: EventType) -> list[dict]:
    return events(run_dir(coordinator), type.value)


def raw_exchange(endpoint: str, *messages: dict) -> list[dict]:
    """Send JSON lines on a plain socket; one reply line per message."""
    host, port = endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        stream = sock.makefile("rb")
        return [json.loads(stream.readline()) for _ in messages]


# ------------------------------------------------------------------ roles
def test_an_observer_cannot_forge_a_commit_or_a_shutdown(coordinator):
    """The attack from the issue, byte for byte on a raw socket."""
    hello, reply = raw_exchange(
        coordinator.endpoint,
        {"op": "hello", "id": 1, "version": PROTOCOL_VERSION, "role": "observer"},
        {"op": "telemetry", "id": 2, "events": [
            {"type": "checkpoint_committed", "step": 999999, "path": "/etc/passwd"}, {"type": "shutdown"}]})
    assert hello["ok"]
    assert not reply["ok"] and reply["code"] == Code.FORBIDDEN
    assert "observer" in reply["error"] and "telemetry" in reply["error"]
    assert not logged(coordinator, EventType.CHECKPOINT_COMMITTED)
    assert not logged(coordinator, EventType.SHUTDOWN)
    assert coordinator.snapshot()["checkpoints"]["latest_step"] is None
    rejected = wait_until(lambda: logged(coordinator, EventType.NODE_REJECTED), 5, "the refusal in the record")
    assert rejected[0]["op"] == Op.TELEMETRY


def test_only_a_node_changes_membership(coordinator):
    member = node_client(coordinator.endpoint, "n0")
    observer = connect(coordinator.endpoint, Role.OBSERVER)
    try:
        assert form_round(member) == 1
        intruder = worker(coordinator.endpoint, 0, 1, "n0")
        for client in (observer, intruder):
            for op in (Op.JOIN, Op.LEAVE, Op.CLOSE):
                with pytest.raises(OperationForbiddenError, match=f"may not send '{op}'"):
                    client.request(op, master_port=1, close=True, timeout=10)
        with pytest.raises(OperationForbiddenError, match="may not send 'hello'"):
            observer.request(Op.HELLO, version=PROTOCOL_VERSION, role=Role.NODE, node_id="n0",
                             run_id="job", timeout=10)
        with pytest.raises(OperationForbiddenError, match="may not send 'subscribe'"):
            intruder.request(Op.SUBSCRIBE, timeout=10)
        observer.request(Op.STATUS, timeout=10)  # what an observer may do still works
        assert not coordinator.snapshot()["rendezvous"]["closed"]
        nodes = coordinator.read_view(lambda view: view.page("rendezvous", "nodes")["items"])
        assert [n["status"] for n in nodes] == ["active"]
        assert not logged(coordinator, EventType.RENDEZVOUS_CLOSED)
        assert not logged(coordinator, EventType.NODE_LEFT)
        refusals = [e["op"] for e in logged(coordinator, EventType.NODE_REJECTED)]
        assert sorted(refusals) == sorted(["join", "leave", "close"] * 2 + ["hello", "subscribe"])
        with pytest.raises(OperationForbiddenError):
            observer.request(Op.CLOSE, timeout=10)
        assert len(logged(coordinator, EventType.NODE_REJECTED)) == 8, "one record per connection and op"
        intruder.close()
    finally:
        observer.close()
        member.close()


# ------------------------------------------------------------------ reports
def test_worker_reports_are_stamped_and_cannot_forge_control_events(coordinator):
    member = node_client(coordinator.endpoint, "n0")
    try:
        assert form_round(member) == 1
        rank1 = worker(coordinator.endpoint, 1, 1, "n0")
        forged = [{"type": t} for t in ("node_dead", "shutdown", "round_completed", "no_such_event")]
        reply = rank1.request(Op.TELEMETRY, timeout=10, events=[
            *forged, *forged,
            {"type": "checkpoint_saved", "step": 5, "rank": 0, "node_id": "someone-else", "bytes": 10,
             "stall_s": 0.0, "write_s": 0.1, "mb_s": 1.0, "seq": 1, "ts": 1.0},
        ])
        assert (reply["accepted"], reply["refused"]) == (1, 8)
        saved, = logged(coordinator, EventType.CHECKPOINT_SAVED)
        assert (saved["rank"], saved["node_id"]) == (1, "n0"), "stamped from the hello, not the report"
        assert saved["seq"] != 1 and saved["ts"] != 1.0
        assert not logged(coordinator, EventType.NODE_DEAD) and not logged(coordinator, EventType.SHUTDOWN)
        assert len(logged(coordinator, EventType.ROUND_COMPLETED)) == 1, "only the round that formed"
        refused = logged(coordinator, EventType.REPORT_REFUSED)
        assert sorted(e["refused_type"] for e in refused) == sorted(
            ["node_dead", "shutdown", "round_completed", "no_such_event"]), "one per connection and type"
        assert {(e["rank"], e["node_id"]) for e in refused} == {(1, "n0")}
        assert "coordinator" in next(e["why"] for e in refused if e["refused_type"] == "shutdown")
        assert "unknown" in next(e["why"] for e in refused if e["refused_type"] == "no_such_event")
        rank1.close()
    finally:
        member.close()


def test_a_commit_is_accepted_only_from_rank_0(coordinator):
    member = node_client(coordinator.endpoint, "n0")
    try:
        form_round(member)
        commit = {"type": "checkpoint_committed", "step": 7, "path": "/ckpt/step7", "bytes": 5, "total_s": 0.5,
                  "mb_s": 1.0, "commit_s": 0.1, "world_size": 2}
        rank1, rank0 = worker(coordinator.endpoint, 1, 1, "n0"), worker(coordinator.endpoint, 0, 1, "n0")
        assert rank1.request(Op.TELEMETRY, events=[{**commit, "rank": 0}], timeout=10)["refused"] == 1
        assert coordinator.snapshot()["checkpoints"]["latest_step"] is None
        assert rank0.request(Op.TELEMETRY, events=[{**commit, "step": 8}], timeout=10)["accepted"] == 1
        committed, = logged(coordinator, EventType.CHECKPOINT_COMMITTED)
        assert (committed["step"], committed["rank"]) == (8, 0)
        assert coordinator.snapshot()["checkpoints"]["latest_step"] == 8
        why, = [e["why"] for e in logged(coordinator, EventType.REPORT_REFUSED)]
        assert "rank 0" in why
        rank0.close()
        rank1.close()
    finally:
        member.close()


def test_a_worker_of_another_round_may_not_report(coordinator):
    """A worker of round 1 whose reports arrive after round 2 formed is refused, as is a worker that
    claims a round that never was, one that names no node of the round, and any worker before a
    first round exists."""
    report = [{"type": "data_progress", "dataset": "d", "epoch": 0, "position": 8, "size": 16}]
    early = worker(coordinator.endpoint, 0, 1, "n0")
    assert early.request(Op.TELEMETRY, events=report, timeout=10)["refused"] == 1
    member = node_client(coordinator.endpoint, "n0")
    try:
        assert form_round(member) == 1
        current, future = worker(coordinator.endpoint, 0, 1, "n0"), worker(coordinator.endpoint, 0, 9, "n0")
        stranger = worker(coordinator.endpoint, 0, 1, "not-a-participant")
        assert current.request(Op.TELEMETRY, events=report, timeout=10)["accepted"] == 1
        assert future.request(Op.TELEMETRY, events=report, timeout=10)["refused"] == 1
        assert stranger.request(Op.TELEMETRY, events=report, timeout=10)["refused"] == 1
        assert form_round(member) == 2  # its agent restarted the workers: round 1 is over
        late = current.request(Op.TELEMETRY, events=report, timeout=10)
        assert (late["accepted"], late["refused"]) == (0, 1)
        assert len(logged(coordinator, EventType.DATA_PROGRESS)) == 1
        whys = [e["why"] for e in logged(coordinator, EventType.REPORT_REFUSED)]
        assert len(whys) == 4
        assert any("round 1" in w and "current round is 2" in w for w in whys)
        assert any("not-a-participant" in w for w in whys)
        for client in (early, current, future, stranger):
            client.close()
    finally:
        member.close()


def test_previews_and_metrics_are_pushed_not_logged(coordinator):
    pushed: list[tuple[str, dict]] = []
    both = threading.Event()

    def on_push(message: dict) -> None:
        if message.get("push") in ("preview", "metric"):
            pushed.append((message["push"], message["event"]))
            if len(pushed) == 2:
                both.set()

    watcher = connect(coordinator.endpoint, Role.OBSERVER, on_push=on_push)
    member = node_client(coordinator.endpoint, "n0")
    try:
        watcher.request(Op.SUBSCRIBE, since=0, timeout=10)
        form_round(member)
        rank0 = worker(coordinator.endpoint, 0, 1, "n0")
        rank0.request(Op.TELEMETRY, timeout=10, events=[
            {"type": "data_preview", "dataset": "d", "epoch": 0, "index": 3, "rank": 5},
            {"type": "metric", "name": "loss", "value": 0.5, "step": 1}])
        assert both.wait(10)
        assert sorted(kind for kind, _ in pushed) == ["metric", "preview"]
        assert all(event["rank"] == 0 and event["node_id"] == "n0" for _, event in pushed)
        assert not logged(coordinator, EventType.DATA_PREVIEW) and not logged(coordinator, EventType.METRIC)
        rank0.close()
    finally:
        member.close()
        watcher.close()


# ------------------------------------------------------------------ hello
def test_the_hello_reply_says_whether_the_rendezvous_is_closed(coordinator):
    member = node_client(coordinator.endpoint, "n0")
    try:
        assert member.welcome["closed"] is False
        member.request(Op.CLOSE, timeout=10)
        fresh = connect(coordinator.endpoint, Role.OBSERVER)
        assert fresh.welcome["closed"] is True
        fresh.close()
    finally:
        member.close()


def test_a_unicode_token_lets_nodes_workers_and_observers_in(tmp_path):
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from torchrt.rendezvous import create_handler

    c = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0, token=UNICODE_TOKEN))
    c.start()
    try:
        handler = create_handler(RendezvousParameters("torchrt", c.endpoint, "job", 1, 1, is_host="false",
                                                      token=UNICODE_TOKEN))
        assert handler.next_rendezvous().world_size == 1
        rank0 = worker(c.endpoint, 0, 1, handler.node_id, token=UNICODE_TOKEN)
        assert rank0.request(Op.TELEMETRY, events=[{"type": "metric", "name": "x", "value": 1, "step": 0}],
                             timeout=10)["accepted"] == 1
        rank0.close()
        for wrong in ("sécret-é€", UNICODE_TOKEN + " ", None):
            with pytest.raises(NodeRejectedError, match="token"):
                connect(c.endpoint, Role.OBSERVER, token=wrong)
        handler.shutdown()
    finally:
        c.stop()


@pytest.mark.slow
def test_a_unicode_token_works_for_a_real_torchrun_job(tmp_path):
    from tests.agents import Agent

    results = tmp_path / "results"
    results.mkdir()
    agent = Agent(f"127.0.0.1:{free_port()}", "1", tmp_path / "run", results, conf={"token": UNICODE_TOKEN})
    try:
        rc = agent.wait(120)
        assert rc == 0, agent.log()
    finally:
        agent.close()
    started = events(tmp_path / "run", "worker_started")
    assert sorted(e["rank"] for e in started) == [0, 1]
    barrier = events(tmp_path / "run", "barrier")  # a real worker's report, accepted
    assert barrier and {(e["rank"], e["node_id"]) for e in barrier} == {(0, started[0]["node_id"])}
    assert not events(tmp_path / "run", "report_refused")


# ------------------------------------------------------------------ the decisions, unit by unit
def a_round(number: int = 3, participants: tuple[str, ...] = ("n0", "n1")) -> Round:
    return Round(number, participants, "127.0.0.1", 1, "gloo", "test", 0.0, 0.0)


def gate(rank: int = 1, round_number: int | None = 3, node_id: str | None = "n1") -> ReportGate:
    return ReportGate(WorkerIdentity.from_hello({"rank": rank, "round": round_number, "node_id": node_id}))


@pytest.mark.parametrize("role", list(Role))
def test_each_role_may_send_exactly_its_ops(role):
    for op in Op:
        why = forbidden(role, op)
        assert (why is None) == (op in ROLE_OPS[role]), (role, op)
        if why is not None:
            assert f"a {role} connection may not send '{op}'" in why


def test_every_worker_report_type_passes_and_every_coordinator_type_is_refused():
    g = gate(rank=0)
    for type in EventType:
        verdict = g.admit({"type": type.value}, a_round())
        assert isinstance(verdict, Accepted) == (EVENTS[type].origin is Origin.WORKER), type


def test_stamps_override_the_report_and_reserved_fields_are_dropped():
    verdict = gate().admit({"type": "data_progress", "rank": 0, "node_id": "n0", "seq": 9, "ts": 12.5,
                            "position": 4}, a_round())
    assert isinstance(verdict, Accepted)
    assert verdict.type is EventType.DATA_PROGRESS and verdict.ts == 12.5
    assert verdict.fields == {"rank": 1, "node_id": "n1", "position": 4}
    assert gate().admit({"type": "metric", "ts": float("nan")}, a_round()).ts is None


@pytest.mark.parametrize("worker, current, why", [
    ({"round_number": 2}, a_round(3), "started for round 2, but the current round is 3"),
    ({"round_number": None}, a_round(3), "names no round"),
    ({}, None, "no round has formed yet"),
    ({"node_id": "n9"}, a_round(3), "'n9' is not a participant of round 3"),
    ({"node_id": None}, a_round(3), "None is not a participant"),
])
def test_only_a_worker_of_the_current_round_on_one_of_its_nodes_reports(worker, current, why):
    verdict = gate(**worker).admit({"type": "data_progress"}, current)
    assert isinstance(verdict, Refused) and why in verdict.why


def test_a_commit_only_from_rank_0():
    commit = {"type": "checkpoint_committed", "step": 1}
    refused = gate(rank=1).admit(commit, a_round())
    assert isinstance(refused, Refused) and "only rank 0 reports checkpoint_committed" in refused.why
    assert isinstance(gate(rank=0, node_id="n0").admit(commit, a_round()), Accepted)
    assert isinstance(gate(rank=1).admit({"type": "checkpoint_saved"}, a_round()), Accepted)


def test_each_refused_type_is_recorded_once_and_the_records_are_bounded():
    g = gate()
    first, again = g.admit({"type": "shutdown"}, a_round()), g.admit({"type": "shutdown"}, a_round())
    assert first.first and not again.first
    assert first.record() == {"rank": 1, "node_id": "n1", "refused_type": "shutdown",
                              "why": "a coordinator event: only the coordinator records it"}
    assert g.admit("junk", a_round()).type == "(malformed)"
    assert g.admit({"type": 5}, a_round()).first is False, "one record for all malformed reports"
    long = g.admit({"type": "x" * 10_000}, a_round())
    assert long.first and len(long.type) == MAX_REFUSED_TYPE_CHARS
    flood = [g.admit({"type": f"bogus{i}"}, a_round()) for i in range(2 * MAX_RECORDED_REFUSALS)]
    assert sum(v.first for v in flood) == MAX_RECORDED_REFUSALS - 3  # 3 kinds were recorded above
    assert all(isinstance(v, Refused) for v in flood)


@pytest.mark.parametrize("info, match", [
    (None, "'info' as an object, got NoneType"),
    ({}, "rank as an integer >= 0, got None"),
    ({"rank": -1}, "got -1"),
    ({"rank": True}, "got True"),
    ({"rank": 0, "round": "3"}, "round as an integer, got '3'"),
    ({"rank": 0, "node_id": 7}, "node_id as a string, got 7"),
])
def test_a_worker_hello_must_say_who_it_is(info, match):
    with pytest.raises(ValueError, match=match):
        WorkerIdentity.from_hello(info)


def test_a_worker_hello_records_only_the_documented_fields():
    worker = WorkerIdentity.from_hello({"rank": 0, "round": 1, "pid": 7, "type": "shutdown", "seq": 1})
    assert worker.info == {"rank": 0, "round": 1, "pid": 7}


@pytest.mark.parametrize("presented, expected, match", [
    (UNICODE_TOKEN, UNICODE_TOKEN, True),
    ("sécret", "secret", False),
    (None, None, True),
    ("", None, True),
    ("x", None, False),
    (None, "x", False),
    (5, "5", False),
    ("\ud800", "\ud800", True),  # a lone surrogate (valid JSON) neither crashes nor matches another token
    ("\ud800", "\ud801", False),
])
def test_tokens_compare_as_utf8_bytes(presented, expected, match):
    assert token_matches(presented, expected) is match


# ------------------------------------------------------------------ where the token comes from
@pytest.fixture
def clean_token_env(monkeypatch):
    monkeypatch.delenv(Env.TOKEN, raising=False)
    monkeypatch.delenv(Env.TOKEN_FILE, raising=False)
    return monkeypatch


def test_token_sources_in_order(tmp_path, clean_token_env):
    explicit_file, env_file = tmp_path / "explicit", tmp_path / "env"
    explicit_file.write_text(UNICODE_TOKEN + "\n", encoding="utf-8")
    env_file.write_bytes(b"from-env-file\r\n")
    assert resolve_token(None, None) is None
    clean_token_env.setenv(Env.TOKEN_FILE, str(env_file))
    assert resolve_token(None, None) == "from-env-file"
    clean_token_env.setenv(Env.TOKEN, "from-env")
    assert resolve_token(None, None) == "from-env"
    assert resolve_token(None, str(explicit_file)) == UNICODE_TOKEN
    assert resolve_token("explicit", str(explicit_file)) == "explicit"
    clean_token_env.setenv(Env.TOKEN, "")  # empty counts as unset
    assert resolve_token(None, None) == "from-env-file"


def test_only_the_trailing_newline_is_stripped(tmp_path, clean_token_env):
    path = tmp_path / "t"
    path.write_bytes(b" a b \n\n")
    assert resolve_token(None, str(path)) == " a b \n"


@pytest.mark.parametrize("content, match", [
    (None, r"token file .*missing: cannot be read \(No such file or directory\)"),
    (b"", r"token file .*missing: holds no token"),
    (b"\n", r"token file .*missing: holds no token"),
    (b"\xff\xfe", r"token file .*missing: expected UTF-8 text"),
])
def test_a_bad_token_file_is_a_clear_error(tmp_path, clean_token_env, content, match):
    path = tmp_path / "missing"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TokenFileError, match=match):
        resolve_token(None, str(path))


def test_a_bad_token_file_from_the_environment_names_the_variable(tmp_path, clean_token_env):
    clean_token_env.setenv(Env.TOKEN_FILE, str(tmp_path / "nope"))
    with pytest.raises(TokenFileError, match=f"{Env.TOKEN_FILE} .*nope: cannot be read"):
        resolve_token(None, None)
