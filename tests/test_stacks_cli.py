"""Stack dumps through the coordinator and ``torchrt stacks``.

Three layers: the coordinator's bookkeeping alone (torchrt/coordinator/stacks.py, pure); a real
coordinator on a real socket with worker connections in this process that answer with the real
:class:`StackResponder` (their stacks are this process's threads); and a real torchrun job whose
ranks are stuck in a gloo collective, a tight Python loop and ``time.sleep``, dumped with the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from torchrt.contract import STACK_DUMP_TIMEOUT_S, EventType, Op, Push, Role, StackAnswer
from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig
from torchrt.coordinator import stacks as coordinator_stacks
from torchrt.coordinator.stacks import REQUESTED, StackDumps, next_request_number
from torchrt.errors import NodeRejectedError, OperationForbiddenError, ProtocolError
from torchrt.telemetry.stacks import StackResponder
from torchrt.view.stacks import group_stacks

from tests.agents import REPO, Agent
from tests.helpers import events, form_round, free_port, node_client, wait_until

TORCHRT = [sys.executable, "-m", "launch.cli"]
JOB = Path(__file__).resolve().parent / "stacks_job.py"


def torchrt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRT, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


# ------------------------------------------------------------------ the bookkeeping, pure
THREADS = [{"name": "MainThread", "internal": False, "frames": [{"file": "t.py", "line": 1, "function": "f"}]}]


def test_a_dump_of_every_rank_asks_the_live_ones_and_answers_for_the_gone_and_unknown_at_once():
    dumps = StackDumps(first_request=5)
    a, b, old, went = object(), object(), object(), object()
    dumps.connected(a, 0, 3, world_size=4)
    dumps.connected(b, 1, 3, world_size=4)
    dumps.connected(old, 2, 2, world_size=4)  # a worker of an earlier round is not asked
    dumps.connected(went, 2, 3, world_size=4)
    assert dumps.disconnected(went, now=0.5) == []  # rank 2 of round 3 went
    dump = dumps.begin(None, 3, REQUESTED, now=1.0, wall=1e9)
    assert dump.request == 5 and dump.waiting == {0: a, 1: b}
    assert {r: e["answer"] for r, e in dump.entries.items()} == {2: "gone", 3: "gone"}  # 3: never came
    alone = dumps.begin([7], 3, REQUESTED, now=1.0, wall=1e9)
    assert alone.request == 6 and alone.done and alone.entries[7]["answer"] == StackAnswer.UNKNOWN


def test_answers_count_only_from_the_connection_asked_under_its_own_rank():
    dumps = StackDumps()
    a, b, stranger = object(), object(), object()
    dumps.connected(a, 0, None, 2)
    dumps.connected(b, 1, None, 2)
    dump = dumps.begin(None, None, REQUESTED, now=10.0, wall=1e9)
    assert dumps.answer(stranger, {"request": dump.request, "threads": THREADS}, 10.1) is None  # never said hello
    assert dumps.answer(a, {"request": dump.request + 1, "threads": THREADS}, 10.1) is None  # no such request
    assert dumps.answer(a, {"request": [dump.request], "threads": THREADS}, 10.1) is None  # not even a number
    assert dumps.answer(a, {"request": dump.request, "rank": 1, "pid": 7, "threads": THREADS}, 10.25) is None
    assert dumps.answer(a, {"request": dump.request, "threads": []}, 10.3) is None  # already answered
    done = dumps.answer(b, {"op": Op.STACKS, "request": dump.request, "pid": 8}, 10.5)  # no threads
    assert done is dump and not dumps.pending
    assert dump.entries[0] == {"pid": 7, "threads": THREADS, "answer": "answered", "after_s": 0.25}
    assert dump.entries[1] == {"pid": 8, "answer": "error", "after_s": 0.5,
                               "error": "malformed answer: expected 'threads' as a list, got NoneType"}
    assert dumps.answer(b, {"request": dump.request, "threads": THREADS}, 11.0) is None  # late


def test_a_rank_whose_connection_ends_is_gone_and_the_silent_ones_time_out():
    dumps = StackDumps()
    a, b, c = object(), object(), object()
    for rank, conn in enumerate((a, b, c)):
        dumps.connected(conn, rank, 1, 3)
    dump = dumps.begin(None, 1, "rank_stalled", now=0.0, wall=1e9, timeout_s=2.0)
    dumps.answer(a, {"request": dump.request, "threads": THREADS, "pid": 1}, 0.1)
    assert dumps.disconnected(b, 0.2) == [] and dump.entries[1]["answer"] == "gone"
    assert dumps.expire(1.9) == []
    assert dumps.expire(2.0) == [dump]
    assert dump.entries[2] == {"answer": "no_answer", "after_s": 2.0}
    assert dump.summary() == {"request": 1, "reason": "rank_stalled", "path": "stacks/1.json", "ranks": [0, 1, 2],
                              "answered": [0], "missing": {"gone": [1], "no_answer": [2]}, "slowest_s": 0.1}
    assert json.loads(json.dumps(dump.record()))["ranks"]["0"]["pid"] == 1


def test_a_reply_too_large_for_one_message_carries_the_path_and_a_summary(monkeypatch):
    dumps = StackDumps()
    for rank in range(3):
        dumps.connected(rank, rank, None, 3)
    dump = dumps.begin(None, None, REQUESTED, now=0.0, wall=1e9)
    for rank in range(3):  # the same stacks: one copy in the reply
        dumps.answer(rank, {"request": dump.request, "threads": THREADS}, 0.1)
    reply = dump.reply("stacks/1.json")
    assert [reply["dump"]["ranks"][str(r)].get("same_as") for r in range(3)] == [None, 0, 0]
    monkeypatch.setattr(coordinator_stacks, "MAX_REPLY_BYTES", 100)
    small = dump.reply("stacks/1.json")
    assert "dump" not in small and small["truncated"] and small["summary"] == "3 ranks in f"
    assert small["path"] == "stacks/1.json" and small["answered"] == [0, 1, 2]


def test_dump_numbers_continue_after_the_largest_file_kept(tmp_path):
    assert next_request_number(tmp_path / "absent") == 1
    for name in ("3.json", "10.json", "notes.json", "11.json.tmp", "12"):
        (tmp_path / name).write_text("{}")
    assert next_request_number(tmp_path) == 11


# ------------------------------------------------------------------ a real coordinator, workers in-process
class Worker:
    """A worker connection as torchrt.init() makes it, answering with the real StackResponder."""

    def __init__(self, endpoint: str, rank: int, *, world_size: int = 2, round_number: int | None = None,
                 node_id: str | None = None, answers: bool = True, token: str | None = None) -> None:
        self.pushes: list[dict[str, Any]] = []
        responder = StackResponder(lambda op, **fields: self.client.send(op, **fields))

        def on_push(message: dict[str, Any]) -> None:
            self.pushes.append(message)
            if answers:
                responder.on_push(message)

        self.client = CoordinatorClient(endpoint, role=Role.WORKER, run_id="job", token=token, on_push=on_push,
                                        hello={"info": {"rank": rank, "world_size": world_size, "pid": os.getpid(),
                                                        "round": round_number, "node_id": node_id}})
        self.client.connect(timeout=10)


PARKED = """
import sys
from tests.test_stacks_cli import Worker
endpoint, world_size, *ranks = sys.argv[1:]
workers = [Worker(endpoint, int(rank), world_size=int(world_size)) for rank in ranks]
print("ready", flush=True)
sys.stdin.read()  # parked here until the test closes stdin
"""


@contextmanager
def parked_workers(endpoint: str, ranks: list[int], world_size: int) -> Iterator[subprocess.Popen]:
    """Worker connections in a child process whose only thread of its own, the main one, is parked
    reading stdin, so every dump of them shows the same stacks. (In this process the test's own
    thread is somewhere in its request while the ranks' captures run, not always at the same line.)"""
    child = subprocess.Popen([sys.executable, "-c", PARKED, endpoint, str(world_size), *map(str, ranks)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n", "the parked workers never connected"
        yield child
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def operator(endpoint: str, role: Role = Role.OPERATOR, token: str | None = None) -> CoordinatorClient:
    client = CoordinatorClient(endpoint, role=role, token=token)
    client.connect(timeout=10)
    return client


def dumped(run_dir: Path, request: int) -> dict[str, Any]:
    return wait_until(lambda: next((e for e in events(run_dir, EventType.STACKS_DUMPED) if e["request"] == request),
                                   None), timeout=10, what=f"stacks_dumped {request}")


def test_a_dump_over_the_coordinator_groups_ranks_keeps_the_file_and_records_the_event(coordinator, tmp_path):
    with parked_workers(coordinator.endpoint, [0, 1], world_size=3):
        client = operator(coordinator.endpoint)
        try:
            started = time.monotonic()
            reply = client.request(Op.DUMP_STACKS, timeout=10)
            took = time.monotonic() - started
        finally:
            client.close()
    assert took < STACK_DUMP_TIMEOUT_S  # rank 2 (never connected) does not hold the dump up
    ranks = reply["dump"]["ranks"]
    assert {r: e["answer"] for r, e in ranks.items()} == {"0": "answered", "1": "answered", "2": "gone"}
    assert [g.ranks for g in group_stacks(ranks)] == [(0, 1), (2,)]  # one parked process: the same stacks
    assert ranks["1"]["same_as"] == 0 and "threads" not in ranks["1"]
    run_dir = tmp_path / "run"
    kept = json.loads((run_dir / reply["path"]).read_text())
    assert kept["request"] == reply["request"] == 1 and kept["reason"] == REQUESTED
    assert kept["ranks"]["1"]["threads"] and kept["timeout_s"] == STACK_DUMP_TIMEOUT_S  # the file keeps them all
    event = dumped(run_dir, 1)
    assert (event["path"], event["ranks"], event["answered"], event["missing"]) == (
        "stacks/1.json", [0, 1, 2], [0, 1], {"gone": [2]})
    assert 0 < event["slowest_s"] < STACK_DUMP_TIMEOUT_S


def test_a_gone_rank_is_answered_at_once_and_a_silent_one_at_the_timeout(coordinator, tmp_path):
    gone = Worker(coordinator.endpoint, 1)
    gone.client.close()
    wait_until(lambda: events(tmp_path / "run", EventType.WORKER_STOPPED), 10, "rank 1 stopped")
    silent = Worker(coordinator.endpoint, 0, answers=False)
    client = operator(coordinator.endpoint)
    try:
        started = time.monotonic()
        reply = client.request(Op.DUMP_STACKS, rank=1, timeout=10)
        # at once: not after the dump's timeout (what a silent rank costs)
        assert time.monotonic() - started < STACK_DUMP_TIMEOUT_S
        assert reply["dump"]["ranks"] == {"1": {"answer": "gone", "after_s": 0.0}}
        assert silent.pushes == []  # a dump of rank 1 asks nobody else
        started = time.monotonic()
        reply = client.request(Op.DUMP_STACKS, rank=0, timeout_s=0.3, timeout=10)
        assert 0.3 <= time.monotonic() - started < 2.0
        assert reply["dump"]["ranks"]["0"]["answer"] == "no_answer" and reply["dump"]["timeout_s"] == 0.3
        assert [p["push"] for p in silent.pushes] == [Push.DUMP_STACKS]
        # a worker that goes while a dump waits for it is gone, without waiting for the timeout
        answer: dict[str, Any] = {}
        asking = threading.Thread(target=lambda: answer.update(client.request(Op.DUMP_STACKS, rank=0, timeout_s=20,
                                                                              timeout=30)))
        asking.start()
        wait_until(lambda: len(silent.pushes) == 2, 10, "the dump waiting on rank 0")
        started = time.monotonic()
        silent.client.close()
        asking.join(10)
        assert time.monotonic() - started < 2.0 and answer["dump"]["ranks"]["0"]["answer"] == "gone"
    finally:
        client.close()
        silent.client.close()


def test_workers_of_an_earlier_round_are_not_asked_and_an_unknown_rank_is_said_so(coordinator):
    node = node_client(coordinator.endpoint)
    number = form_round(node)
    current = Worker(coordinator.endpoint, 0, world_size=1, round_number=number, node_id="n0")
    stale = Worker(coordinator.endpoint, 0, world_size=1, round_number=number - 1, node_id="n0")
    client = operator(coordinator.endpoint)
    try:
        ranks = client.request(Op.DUMP_STACKS, timeout=10)["dump"]["ranks"]
        assert list(ranks) == ["0"] and ranks["0"]["answer"] == "answered" and stale.pushes == []
        assert len(current.pushes) == 1
        assert client.request(Op.DUMP_STACKS, rank=5, timeout=10)["dump"]["ranks"]["5"]["answer"] == "unknown"
    finally:
        for c in (client, current.client, stale.client, node):
            c.close()


@pytest.mark.parametrize("fields, match", [
    ({"rank": -1}, "dump_stacks 'rank': expected an integer >= 0 or null, got -1"),
    ({"rank": "0"}, "dump_stacks 'rank': expected an integer >= 0 or null, got '0'"),
    ({"timeout_s": 0}, "dump_stacks 'timeout_s': expected seconds > 0 and <= 60, got 0"),
    ({"timeout_s": True}, "dump_stacks 'timeout_s': expected seconds > 0 and <= 60, got True"),
])
def test_a_bad_dump_request_is_refused_naming_the_field(coordinator, fields, match):
    client = operator(coordinator.endpoint)
    try:
        with pytest.raises(ProtocolError, match=f"^{match.replace('(', '[(]')}$"):
            client.request(Op.DUMP_STACKS, timeout=10, **fields)
    finally:
        client.close()


def test_only_an_operator_may_ask_for_a_dump_and_only_with_the_token(tmp_path):
    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0, token="sesame"))
    coordinator.start()
    try:
        for role in (Role.OBSERVER, Role.WORKER, Role.NODE):
            hello = {"info": {"rank": 0}} if role is Role.WORKER else {"node_id": "n0", "job": {
                "min_nodes": 1, "max_nodes": 1}} if role is Role.NODE else {}
            client = CoordinatorClient(coordinator.endpoint, role=role, run_id="job", token="sesame", hello=hello)
            client.connect(timeout=10)
            try:
                with pytest.raises(OperationForbiddenError, match=f"a {role} connection may not send 'dump_stacks'"):
                    client.request(Op.DUMP_STACKS, timeout=10)
            finally:
                client.close()
        with pytest.raises(NodeRejectedError, match="operator presented a token that does not match"):
            operator(coordinator.endpoint, token="wrong")
        client = operator(coordinator.endpoint, token="sesame")
        try:
            # the worker above said hello, then went
            assert client.request(Op.DUMP_STACKS, timeout=10)["dump"]["ranks"] == {"0": {"answer": "gone",
                                                                                        "after_s": 0.0}}
        finally:
            client.close()
    finally:
        coordinator.stop()
    assert [e["missing"] for e in events(tmp_path / "run", EventType.STACKS_DUMPED)] == [{"gone": [0]}]


def test_the_coordinator_can_dump_a_stalled_rank_itself_and_numbers_go_on_after_a_restart(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "stacks").mkdir(parents=True)
    (run_dir / "stacks" / "41.json").write_text("{}")  # kept by an earlier coordinator of the run
    coordinator = Coordinator(CoordinatorConfig(run_dir=run_dir, port=0))
    coordinator.start()
    try:
        worker = Worker(coordinator.endpoint, 0, world_size=1)
        numbers: list[int] = []
        coordinator._loop.call_soon_threadsafe(lambda: numbers.append(coordinator.dump_stacks([0], "rank_stalled")))
        event = dumped(run_dir, 42)
        worker.client.close()
    finally:
        coordinator.stop()
    assert numbers == [42] and event["reason"] == "rank_stalled" and event["answered"] == [0]
    assert json.loads((run_dir / "stacks" / "42.json").read_text())["reason"] == "rank_stalled"


# ------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("args, message", [
    (["--rank", "-1"], "argument --rank: expected a rank (an integer >= 0), got '-1'"),
    (["--timeout", "0"], "argument --timeout: expected seconds > 0 and <= 60, got '0'"),
    (["--timeout", "soon"], "argument --timeout: expected seconds > 0 and <= 60, got 'soon'"),
])
def test_torchrt_stacks_refuses_bad_arguments_in_one_line(args, message):
    result = torchrt("stacks", *args)
    assert result.returncode == 2 and result.stderr.startswith(f"torchrt: stacks: {message}")
    assert len(result.stderr.splitlines()) == 1


def test_torchrt_stacks_says_in_one_line_when_no_coordinator_answers():
    result = torchrt("stacks", "--endpoint", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("torchrt: no torchrt coordinator answered at 127.0.0.1:")


@pytest.mark.slow
def test_torchrt_stacks_of_a_real_job_names_where_each_rank_is_stuck_within_two_seconds(coordinator, tmp_path):
    """4 ranks: 0 in a gloo all_reduce its peers never call, 1 in a tight loop, 2 and 3 asleep."""
    run_dir, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    agent = Agent(coordinator.endpoint, "1", run_dir, results, nproc=4, run_id="stuck", script=JOB,
                  conf={"is_host": "false"})
    client = operator(coordinator.endpoint)
    try:
        wait_until(lambda: len(events(run_dir, EventType.WORKER_STARTED)) == 4, 120, f"4 workers\n{agent.log()}")
        expected = {"0": "all_reduce", "1": "spin", "2": "nap", "3": "nap"}
        dumps: list[dict[str, Any]] = []

        def stuck() -> bool:  # until each rank is in its place (the first dumps may come early)
            dumps.append(client.request(Op.DUMP_STACKS, timeout=10)["dump"])
            return {r: _innermost(dumps[-1], r) for r in dumps[-1]["ranks"]} == expected

        wait_until(stuck, 90, "every rank stuck in its place", interval=0.2)
        assert max(e["after_s"] for d in dumps for e in d["ranks"].values()) < STACK_DUMP_TIMEOUT_S
        pending = dumps[-1]["ranks"]["0"]["collectives"]["pending"]
        assert [(p["op"], p["seq"]) for p in pending] == [("gloo:all_reduce", 2)]

        result = torchrt("stacks", "--endpoint", coordinator.endpoint)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].endswith("2 ranks in nap, 1 in all_reduce, 1 in spin"), lines[0]  # largest, then lowest rank
        assert "== ranks 2-3 (2 of 4): in nap" in lines and "== rank 1 (1 of 4): in spin" in lines
        assert "  pending gloo:all_reduce #2 on default_pg (scheduled): rank 0" in lines, result.stdout
        kept = Path(lines[-1].removeprefix("kept in "))
        assert kept.parent == (run_dir / "stacks").resolve() and json.loads(kept.read_text())["ranks"]["3"]["threads"]
        assert events(run_dir, EventType.STACKS_DUMPED)[-1]["path"] == f"stacks/{kept.name}"

        sleeper = psutil.Process(dumps[-1]["ranks"]["3"]["pid"])
        sleeper.kill()
        wait_until(lambda: any(e["rank"] == 3 for e in events(run_dir, EventType.WORKER_STOPPED)), 30, "rank 3 gone")
        started = time.monotonic()
        gone = client.request(Op.DUMP_STACKS, rank=3, timeout=10)["dump"]["ranks"]
        assert time.monotonic() - started < STACK_DUMP_TIMEOUT_S and gone["3"] == {"answer": "gone", "after_s": 0.0}
        result = torchrt("stacks", "--endpoint", coordinator.endpoint, "--rank", "3")
        assert result.returncode == 1 and "== rank 3 (1 of 1): gone" in result.stdout
    finally:
        client.close()
        agent.close()


def _innermost(dump: dict[str, Any], rank: str) -> str | None:
    entry = dump["ranks"][rank]
    if "same_as" in entry:
        entry = dump["ranks"][str(entry["same_as"])]
    main = next((t for t in entry.get("threads") or [] if t["name"] == "MainThread"), None)
    return main["frames"][-1]["function"] if main and main["frames"] else None
