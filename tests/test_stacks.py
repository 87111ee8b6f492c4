"""Stack dumps on demand: worker processes stuck in a Python loop, in time.sleep and in a gloo
collective whose peer never arrives each answer a ``dump_stacks`` push within 2 s with stacks
that name where they are stuck; dumps are bounded; ranks with the same stacks are grouped.

The workers are real processes started like torchrun workers of the torchrt backend
(tests/stacks_worker.py runs ``torchrt.init()``), so their coordinator connection and its push
handler are the real ones. The coordinator's side of each connection is a small fake over a
real TCP socket (:class:`FakeCoordinator`): it answers the hello and the telemetry, pushes the
request and times the answer.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from torchrt.contract import STACK_DUMP_TIMEOUT_S, Env, Op, Push, StackAnswer
from torchrt.protocol import decode, encode
from torchrt.telemetry import stacks
from torchrt.telemetry.stacks import MAX_FRAMES, MAX_TEXT, MAX_THREADS, StackResponder
from torchrt.view.stacks import StackDumpError, compact, format_ranks, group_stacks, render, summary

from tests.helpers import free_port, wait_until

# one worker runs this module, so its module-scoped `workers` is built once (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("stacks")

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "stacks_worker.py"
START_TIMEOUT_S = 120  # torch imports and a gloo process group on a busy 2-core machine


class FakeCoordinator:
    """The coordinator's end of one worker connection, on a real socket."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self.greeted = threading.Event()
        self.hello: dict[str, Any] = {}
        self.answers: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self._requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        self._conn = conn
        for line in conn.makefile("rb"):
            message = decode(line)
            if message.get("op") == Op.STACKS:
                self.answers.put((time.monotonic(), message))
            elif message.get("id") is not None:  # hello, telemetry
                self._send({"id": message["id"], "ok": True})
                if message.get("op") == Op.HELLO:
                    self.hello = message
                    self.greeted.set()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.sendall(encode(message))

    def dump(self) -> tuple[float, dict[str, Any]]:
        """Push one dump request; the seconds until its answer, and the answer."""
        assert self.greeted.wait(START_TIMEOUT_S), "the worker never said hello"
        self._requests += 1
        sent = time.monotonic()
        self._send({"push": Push.DUMP_STACKS, "request": self._requests})
        while True:
            try:
                arrived, answer = self.answers.get(timeout=10 * STACK_DUMP_TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(f"no answer to dump request {self._requests}") from None
            if answer.get("request") == self._requests:
                return arrived - sent, answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._server.close()


class Worker:
    """One tests/stacks_worker.py process and its fake coordinator."""

    def __init__(self, case: str, rank: int = 0, world_size: int = 1, master_port: int | None = None) -> None:
        self.case = case
        self.coordinator = FakeCoordinator()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHRT_", "TORCHELASTIC_"))}
        env.update({Env.ENDPOINT: self.coordinator.endpoint, Env.RUN_ID: "stacks-test", Env.BACKEND: "gloo",
                    "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0",
                    "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(master_port or free_port()), "PYTHONPATH": str(REPO)})
        self.process = subprocess.Popen([sys.executable, str(WORKER), case], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if line.strip() == "ready":
                self._ready.set()

    def wait_ready(self) -> None:
        if not self._ready.wait(START_TIMEOUT_S):
            raise AssertionError(f"worker {self.case} never got stuck:\n{''.join(self.output)}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self.coordinator.close()


@pytest.fixture(scope="module")
def workers():
    """The stuck workers, started together (their start-up is most of this module's time)."""
    port = free_port()
    started = {"loop": Worker("loop"), "sleep": Worker("sleep"), "sleep2": Worker("sleep"),
               "gloo": Worker("gloo", 0, 2, port), "peer": Worker("peer", 1, 2, port)}
    try:
        yield started
    finally:
        for worker in started.values():
            worker.stop()


def main_thread(answer: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in answer["threads"] if t["name"] == "MainThread")


def functions(thread: dict[str, Any]) -> list[str]:
    return [f["function"] for f in thread["frames"]]


def dumps_until_at(worker: Worker, function: str,
                   lines: tuple[str, ...] | None = None) -> list[tuple[float, dict[str, Any]]]:
    """Dumps of ``worker`` until its main thread is in ``function`` (on one of ``lines``, if given):
    "ready" is printed just before the worker gets there, so a first dump may find it on the way."""
    worker.wait_ready()
    dumps: list[tuple[float, dict[str, Any]]] = []

    def there() -> bool:
        dumps.append(worker.coordinator.dump())
        innermost = main_thread(dumps[-1][1])["frames"][-1]
        return innermost["function"] == function and (lines is None or innermost["code"] in lines)

    wait_until(there, timeout=30, what=f"the {worker.case} worker in {function}", interval=0.05)
    return dumps


@pytest.mark.parametrize("case, function, code", [
    ("loop", "spin", "x += 1"),
    ("sleep", "nap", "time.sleep(600)"),
])
def test_a_worker_stuck_in_python_answers_within_two_seconds_naming_its_function(workers, case, function, code):
    worker = workers[case]
    dumps = dumps_until_at(worker, function, (code, "while True:"))
    assert max(took for took, _ in dumps) < STACK_DUMP_TIMEOUT_S, [round(t, 3) for t, _ in dumps]
    answer = dumps[-1][1]
    thread = main_thread(answer)
    innermost = thread["frames"][-1]
    assert innermost["function"] == function, functions(thread)
    if case == "sleep":
        assert innermost["code"] == code
    else:  # the loop is on one of its two lines
        assert innermost["code"] in (code, "while True:")
    assert functions(thread)[-2:] == ["main", function]
    assert answer["pid"] == worker.process.pid
    assert worker.coordinator.hello["info"]["pid"] == worker.process.pid
    own = {t["name"] for t in answer["threads"] if t["internal"]}
    assert "torchrt-client" in own and "torchrt-stacks" not in own  # the thread dumping leaves itself out


def test_a_worker_blocked_in_gloo_all_reduce_answers_within_two_seconds_with_the_pending_collective(workers):
    worker = workers["gloo"]
    workers["peer"].wait_ready()
    dumps = dumps_until_at(worker, "all_reduce")
    assert max(took for took, _ in dumps) < STACK_DUMP_TIMEOUT_S, [round(t, 3) for t, _ in dumps]
    answer = dumps[-1][1]
    assert "reduce" in functions(main_thread(answer))
    pending = answer["collectives"]["pending"]
    assert [(p["op"], p["seq"], p["state"]) for p in pending] == [("gloo:all_reduce", 2, "scheduled")], pending
    assert pending[0]["age_s"] >= 0
    status = answer["collectives"]["groups"]["0"]
    assert (status["last_enqueued_collective"], status["last_completed_collective"]) == ("2", "1")


def test_ranks_with_the_same_stacks_are_grouped_largest_first(workers):
    ranks: dict[str, Any] = {}
    at = {"sleep": ("nap", ("time.sleep(600)",)), "loop": ("spin", ("x += 1", "while True:")),
          "sleep2": ("nap", ("time.sleep(600)",)), "peer": ("main", ("sys.stdin.read()",))}
    for rank, name in enumerate(("sleep", "loop", "sleep2", "peer")):
        took, answer = dumps_until_at(workers[name], *at[name])[-1]
        ranks[str(rank)] = {**answer, "answer": StackAnswer.ANSWERED.value, "after_s": took}
    ranks["4"] = {"answer": StackAnswer.GONE.value}
    ranks["5"] = {"answer": StackAnswer.NO_ANSWER.value}
    groups = group_stacks(ranks)
    # the two sleepers differ in pids, thread idents and their torchrt threads' states, not in stacks
    assert [(g.answer, g.ranks, g.where) for g in groups] == [
        (StackAnswer.ANSWERED, (0, 2), "nap"), (StackAnswer.ANSWERED, (1,), "spin"),
        (StackAnswer.ANSWERED, (3,), "main"),
        (StackAnswer.NO_ANSWER, (5,), None), (StackAnswer.GONE, (4,), None)]
    assert summary(groups) == "2 ranks in nap, 1 in spin, 1 in main; 1 no answer, 1 gone"
    text = render({"request": 7, "reason": "requested", "timeout_s": 2.0, "ranks": ranks})
    assert text.splitlines()[0] == "stack dump 7 (requested): " + summary(groups)
    assert "== ranks 0,2 (2 of 6): in nap" in text
    assert "    nap (" in text and "        time.sleep(600)" in text
    assert "== rank 5 (1 of 6): no answer within 2 s" in text
    assert "torchrt-client" not in text and "torchrt-client" in render({"ranks": ranks}, include_internal=True)
    small = compact(ranks)  # one copy of the sleepers' stacks
    assert small["2"]["same_as"] == 0 and "threads" not in small["2"] and small["2"]["pid"] == ranks["2"]["pid"]
    assert group_stacks(small) == groups and len(encode(small)) < len(encode(ranks))


# ------------------------------------------------------------------ in-process: bounds and the recorder
def _deep(depth: int, stop: threading.Event, reached: threading.Event) -> None:
    if depth:
        _deep(depth - 1, stop, reached)
    else:
        reached.set()
        stop.wait()


def test_a_dump_is_bounded_in_threads_frames_and_text():
    stop = threading.Event()
    deep_reached = threading.Event()
    parked = [threading.Thread(target=stop.wait, name="parked-" + "x" * 2 * MAX_TEXT, daemon=True)
              for _ in range(MAX_THREADS + 5)]
    deep = threading.Thread(target=_deep, args=(3 * MAX_FRAMES, stop, deep_reached), name="a-deep", daemon=True)
    for thread in [deep, *parked]:
        thread.start()
    sent: list[dict[str, Any]] = []
    try:
        assert deep_reached.wait(10)
        StackResponder(lambda op, **fields: sent.append(fields)).on_push({"push": Push.DUMP_STACKS, "request": 1})
        answer = wait_until(lambda: sent and sent[0], timeout=10, what="the answer")
    finally:
        stop.set()
    assert len(answer["threads"]) == MAX_THREADS and answer["threads_omitted"] >= 6
    assert answer["threads"][0]["name"] == "MainThread"
    deepest = next(t for t in answer["threads"] if t["name"] == "a-deep")
    assert len(deepest["frames"]) == MAX_FRAMES and deepest["truncated"] > 2 * MAX_FRAMES
    ours = [f for f in deepest["frames"] if f["function"] == "_deep"]  # the innermost ones are kept
    assert deepest["frames"][0] in ours and ours[-1]["code"] == "stop.wait()" and deepest["frames"][-1] not in ours
    names = [t["name"] for t in answer["threads"] if t["name"].startswith("parked-")]
    assert names and all(len(n) == MAX_TEXT and n.endswith("…") for n in names)
    assert len(encode(answer)) < 2 * 1024 * 1024


def test_stacks_over_the_byte_budget_lose_outer_frames_until_they_fit(monkeypatch):
    stop, reached = threading.Event(), threading.Event()
    deep = threading.Thread(target=_deep, args=(2 * MAX_FRAMES, stop, reached), name="a-deep", daemon=True)
    deep.start()
    try:
        assert reached.wait(10)
        budget = len(json.dumps(stacks.capture_threads()[0])) // 3
        monkeypatch.setattr(stacks, "MAX_STACKS_BYTES", budget)
        threads, _ = stacks.capture_threads()
    finally:
        stop.set()
    assert len(json.dumps(threads)) <= budget
    deepest = next(t for t in threads if t["name"] == "a-deep")
    assert len(deepest["frames"]) < MAX_FRAMES and deepest["frames"][-1]["function"] == "wait"
    assert len(deepest["frames"]) + deepest["truncated"] > 2 * MAX_FRAMES


def test_a_process_without_torch_distributed_answers_without_collectives_and_without_importing_torch():
    script = ("import sys, json; from torchrt.telemetry.stacks import StackResponder; "
              "answer = StackResponder(lambda op, **f: None).answer(1); "
              "print(json.dumps([sorted(answer), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    keys, torch_loaded = json.loads(out.stdout)
    assert keys == ["capture_ms", "pid", "request", "threads", "threads_omitted"] and not torch_loaded


def test_torch_without_a_flight_recorder_gives_no_collectives_and_an_older_one_is_used(monkeypatch):
    import torch.distributed  # noqa: F401  (the recorder is read only where torch.distributed is loaded)
    import torch._C._distributed_c10d as c10d

    monkeypatch.delattr(c10d, "_dump_fr_trace_json")
    monkeypatch.delattr(c10d, "_dump_nccl_trace_json", raising=False)
    assert "collectives" not in StackResponder(lambda op, **f: None).answer(1)
    legacy = json.dumps({"entries": [{"profiling_name": "nccl:all_gather", "collective_seq_id": 9,
                                      "process_group": ["1", "tp"], "state": "started",
                                      "time_created_ns": 5_000_000_000}],
                         "pg_status": {"1": {"last_completed_collective": "8"}}}).encode()
    monkeypatch.setattr(c10d, "_dump_nccl_trace_json", lambda collectives, only_active: legacy, raising=False)
    collectives = stacks.pending_collectives(now_ns=7_500_000_000)
    assert collectives == {"pending": [{"op": "nccl:all_gather", "seq": 9, "p2p_seq": None, "group": "tp",
                                        "state": "started", "sizes": None, "timeout_ms": None, "age_s": 2.5}],
                           "more": 0, "groups": {"1": {"last_completed_collective": "8"}}}


def test_a_flight_recorder_that_blocks_or_fails_costs_its_part_of_the_answer_only():
    release = threading.Event()

    def blocks(*args: Any) -> bytes:
        release.wait()
        return b"{}"

    sent: list[dict[str, Any]] = []
    responder = StackResponder(lambda op, **fields: sent.append({"op": op, **fields}), recorder=blocks)
    try:
        started = time.monotonic()
        first = responder.answer(1)
        assert time.monotonic() - started < stacks.FLIGHT_RECORDER_TIMEOUT_S + 1.0
        assert first["threads"] and "did not answer within" in first["collectives_error"]
        assert "has not yet answered" in responder.answer(2)["collectives_error"]
    finally:
        release.set()

    def fails(*args: Any) -> bytes:
        return b"[1, 2]"

    responder = StackResponder(lambda op, **fields: sent.append({"op": op, **fields}), recorder=fails)
    responder.on_push({"push": Push.LOST})  # not a dump request: ignored
    responder.on_push({"push": Push.DUMP_STACKS, "request": 3})
    wait_until(lambda: sent, timeout=10, what="the answer to request 3")
    assert sent[0]["op"] == Op.STACKS and sent[0]["request"] == 3
    assert sent[0]["collectives_error"] == "ValueError: the flight recorder answered list, expected a JSON object"


# ------------------------------------------------------------------ grouping, pure
def _answer(*functions_lines: tuple[str, int], internal_line: int = 1) -> dict[str, Any]:
    frames = [{"file": "/x/site-packages/train.py", "line": line, "function": fn, "code": ""}
              for fn, line in functions_lines]
    return {"answer": "answered", "threads": [
        {"name": "MainThread", "internal": False, "frames": frames},
        {"name": "torchrt-client", "internal": True,
         "frames": [{"file": "client.py", "line": internal_line, "function": "_read_forever"}]}]}


def test_grouping_ignores_torchrt_threads_and_the_innermost_line_but_not_the_call_sites():
    ranks = {str(r): _answer(("main", 10), ("all_reduce", 100 + r), internal_line=r) for r in range(7)}
    ranks["7"] = _answer(("main", 12), ("all_reduce", 100))   # another all_reduce call: another group
    ranks["8"] = _answer(("main", 11), ("_next_data", 5))
    ranks["9"] = {"answer": "error", "error": "RuntimeError: boom"}
    ranks["10"] = {"answer": "unknown"}
    groups = group_stacks(ranks)
    assert [(g.ranks, g.where) for g in groups] == [
        ((0, 1, 2, 3, 4, 5, 6), "all_reduce"), ((7,), "all_reduce"), ((8,), "_next_data"),
        ((9,), None), ((10,), None)]
    assert groups[3].detail == "RuntimeError: boom"
    assert summary(groups) == ("8 ranks in all_reduce (2 stacks), 1 in _next_data; "
                               "1 could not take stacks, 1 not in the job")
    text = render({"ranks": ranks})
    assert "== ranks 0-6 (7 of 11): in all_reduce\n  Thread 'MainThread'\n    all_reduce (train.py:100)" in text
    assert "== rank 9 (1 of 11): could not take stacks: RuntimeError: boom" in text


def test_format_ranks_collapses_runs():
    assert format_ranks([9, 0, 1, 2, 4, 5, 7]) == "0-2,4-5,7,9"
    assert format_ranks([]) == ""


@pytest.mark.parametrize("ranks, key", [
    ({"x": {"answer": "gone"}}, "ranks"),
    ({"0": "gone"}, "ranks.0"),
    ({"0": {"answer": "lost"}}, "ranks.0.answer"),
    ({"0": {"answer": "answered", "threads": [{"name": "MainThread"}]}}, "ranks.0.threads"),
    ({"0": {"answer": "answered", "same_as": 1}, "1": {"answer": "gone"}}, "ranks.0.same_as"),
])
def test_a_malformed_dump_is_refused_naming_the_key(ranks, key):
    with pytest.raises(StackDumpError, match=rf"^stack dump {key.replace('.', '[.]')}: expected"):
        group_stacks(ranks)
