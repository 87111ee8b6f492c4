"""Nothing is left behind, nothing is misrecorded: the coordinator's and the job's lifecycle.

Real processes where the point is processes: ``torchrt run`` SIGKILLed or interrupted mid-job
(its coordinator, torchrun and workers must all go, and the record must say what happened), a
standalone coordinator SIGKILLed and started again on its run directory, an interpreter exiting
with a coordinator still running. Real file systems where the point is the disk: a read-only and
a full tmpfs (mounting needs root; without it those tests are skipped).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.agents import REPO, Agent
from launch.owner import tell_ended
from tests.helpers import events, free_port, node_client, wait_until
from torchrt.contract import EventType, Role
from torchrt.coordinator import Coordinator, CoordinatorConfig
from torchrt.coordinator.client import CoordinatorClient, ping
from torchrt.coordinator.run_dir import STATE_FILE, EventLog, InvalidRunIdError, check_run_id
from torchrt.errors import NodeRejectedError, RendezvousConfigError
from torchrt.rendezvous.options import RendezvousOptions

TORCHRT = [sys.executable, "-m", "launch.cli"]
ALLREDUCE = REPO / "configs" / "allreduce.yaml"


# ------------------------------------------------------------------ helpers
def gone(proc: psutil.Process) -> bool:
    """Exited (a zombie waiting for its parent to reap it counts as exited)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_run(tmp_path: Path, run_dir: Path, endpoint: str, steps: int, step_s: float = 0.05,
              ) -> subprocess.Popen[str]:
    results = tmp_path / f"results-{os.urandom(2).hex()}"
    results.mkdir()
    env = {**os.environ, "RESULT_DIR": str(results), "STEPS": str(steps), "STEP_SECONDS": str(step_s)}
    return subprocess.Popen([*TORCHRT, "run", str(ALLREDUCE), "--set", f"rendezvous.endpoint={endpoint}",
                             "--set", f"job.run_dir={run_dir}", "--set", "nodes.max=1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def workers_running(run_dir: Path, count: int = 2) -> bool:
    return len(events(run_dir, EventType.WORKER_STARTED)) >= count


def job_tree(runner: subprocess.Popen[str]) -> list[psutil.Process]:
    """The runner's descendants: coordinator, torchrun and its workers."""
    tree = psutil.Process(runner.pid).children(recursive=True)
    commands = [" ".join(p.cmdline()) for p in tree]
    assert any("launch.cli coordinator" in c for c in commands), commands
    assert any("launch.agent" in c for c in commands), commands
    assert sum("allreduce.py" in c for c in commands) >= 2, commands
    return tree


def since_last_start(run_dir: Path) -> list[dict]:
    """The events of the last coordinator that started in ``run_dir``."""
    recorded = events(run_dir)
    starts = [i for i, e in enumerate(recorded) if e["type"] == EventType.COORDINATOR_STARTED]
    return recorded[starts[-1]:]


def kill_tree(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(name, size, read_only=False)``: a real tmpfs under tmp_path (skips without root)."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "1m", read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(fs: Path) -> Path:
    """Fill the file system ``fs`` to the last byte; the file to delete to free it again."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 1):  # then the last partial page, byte by byte
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


# ------------------------------------------------------------- owner death and Ctrl-C
@pytest.mark.slow
def test_sigkill_of_torchrt_run_leaves_nothing_behind(tmp_path: Path) -> None:
    run_dir, endpoint = tmp_path / "run", f"127.0.0.1:{free_port()}"
    runner = start_run(tmp_path, run_dir, endpoint, steps=100_000)
    tree: list[psutil.Process] = []
    try:
        wait_until(lambda: workers_running(run_dir), 120, "the job's two workers")
        tree = job_tree(runner)
        coordinator = next(p for p in tree if "launch.cli coordinator" in " ".join(p.cmdline()))
        runner.send_signal(signal.SIGKILL)  # not reaped until the end: the watchers see a zombie
        killed = time.monotonic()
        wait_until(lambda: gone(coordinator), 15, "the coordinator to exit after its owner's SIGKILL")
        coordinator_s = time.monotonic() - killed
        wait_until(lambda: all(gone(p) for p in tree), 30, "every process of the job to exit")
    finally:
        kill_tree(tree)
        runner.kill()
        runner.communicate()
    assert coordinator_s < 10, f"the coordinator outlived its owner by {coordinator_s:.1f}s"
    record = since_last_start(run_dir)
    kinds = [e["type"] for e in record]
    assert kinds[-1] == EventType.SHUTDOWN and "owner" in record[-1]["reason"], record[-3:]
    assert EventType.NODE_DEAD not in kinds and kinds.count(EventType.ROUND_STARTED) == 1, kinds

    # The endpoint is free and the run can be started again; its record goes on.
    again = start_run(tmp_path, run_dir, endpoint, steps=2, step_s=0)
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    second = since_last_start(run_dir)
    restarted = next(e for e in second if e["type"] == EventType.COORDINATOR_RESTARTED)
    assert restarted["clean"] is True and restarted["last_round"] == 1
    assert [e["round"] for e in second if e["type"] == EventType.ROUND_COMPLETED] == [2]
    print(f"coordinator gone {coordinator_s:.2f}s after SIGKILL of torchrt run")


@pytest.mark.slow
def test_ctrl_c_of_torchrt_run_records_a_clean_shutdown(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    runner = start_run(tmp_path, run_dir, f"127.0.0.1:{free_port()}", steps=100_000)
    tree: list[psutil.Process] = []
    try:
        wait_until(lambda: workers_running(run_dir), 120, "the job's two workers")
        tree = job_tree(runner)
        runner.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        out, err = runner.communicate(timeout=60)
        stop_s = time.monotonic() - interrupted
    finally:
        if runner.poll() is None:
            kill_tree(tree)
            runner.kill()
            runner.communicate()
    assert runner.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "Traceback" not in (run_dir / "coordinator.log").read_text()
    wait_until(lambda: all(gone(p) for p in tree), 10, "every process of the job to exit")
    record = since_last_start(run_dir)
    kinds = [e["type"] for e in record]
    first_stop = kinds.index(EventType.RENDEZVOUS_CLOSED)
    after = kinds[first_stop:]
    assert EventType.NODE_DEAD not in kinds and EventType.ROUND_STARTED not in after, kinds
    assert after.count(EventType.WORKER_STOPPED) == 2 and EventType.NODE_LEFT in after, after
    assert kinds[-1] == EventType.SHUTDOWN and record[-1]["reason"] == "interrupted (SIGINT)"
    left = next(e for e in record if e["type"] == EventType.NODE_LEFT)
    assert left["reason"] == "interrupted (SIGINT)"
    print(f"torchrt run exited {stop_s:.2f}s after SIGINT")


def test_owner_pid_ties_a_coordinator_to_its_owner_and_only_then(tmp_path: Path) -> None:
    """--owner-pid: the coordinator drains and exits once that process is gone; without it, it stays."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    owned = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--run-dir",
                              str(tmp_path / "owned"), "--owner-pid", str(owner.pid)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    standalone = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--run-dir",
                                   str(tmp_path / "standalone")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        for proc in (owned, standalone):
            assert "listening on" in proc.stdout.readline()
        owner.kill()
        owner.wait()
        assert owned.wait(15) == 0
        assert standalone.poll() is None
    finally:
        for proc in (owner, owned, standalone):
            proc.kill()
            proc.wait()
    shutdown = events(tmp_path / "owned", EventType.SHUTDOWN)
    assert len(shutdown) == 1 and shutdown[0]["reason"] == f"its owner (pid {owner.pid}) exited"


def test_an_owner_that_says_the_job_ended_is_recorded_as_the_reason_and_only_an_owner_is_heard(
        tmp_path: Path) -> None:
    """``ended REASON`` on the stdin of a coordinator with --owner-pid: it drains with that reason
    (one line, capped); other lines are not its owner's word, and without --owner-pid stdin is
    not read at all."""
    def coordinator(name: str, *owner: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--run-dir",
                                 str(tmp_path / name), *owner, "--no-monitor"], cwd=REPO,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert b"listening on" in proc.stdout.readline()
        return proc

    owned = coordinator("owned", "--owner-pid", str(os.getpid()))
    standalone = coordinator("standalone")
    try:
        owned.stdin.write(b"not a word of the owner's\n")
        owned.stdin.flush()
        assert tell_ended(owned, "the job ended:\n torchrun exited " + "x" * 500)
        assert owned.wait(15) == 0
        assert tell_ended(standalone, "the job ended: torchrun exited with status 0")
        with pytest.raises(subprocess.TimeoutExpired):
            standalone.wait(1.0)  # it stays up: nobody owns it
        assert events(tmp_path / "standalone", EventType.SHUTDOWN) == []
    finally:
        for proc in (owned, standalone):
            proc.kill()
            proc.wait()
    [shutdown] = events(tmp_path / "owned", EventType.SHUTDOWN)
    assert shutdown["reason"] == ("the job ended: torchrun exited " + "x" * 500)[:200]


# ------------------------------------------------------------- restart on the same run directory
def restarted_node(endpoint: str, node_id: str) -> CoordinatorClient:
    return node_client(endpoint, node_id, run_id="r1", heartbeat_interval=0.2, connect_timeout=30)


def test_restarted_coordinator_continues_the_record(tmp_path: Path) -> None:
    run_dir, port = tmp_path / "run", free_port()
    argv = [*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{port}", "--run-dir", str(run_dir), "--run-id", "r1"]
    endpoint = f"127.0.0.1:{port}"
    first = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    clients: list[CoordinatorClient] = []
    try:
        assert "listening on" in first.stdout.readline()
        clients.append(node := restarted_node(endpoint, "n1"))
        assert node.request("join", master_port=free_port(), timeout=30)["round"] == 1
        clients.append(worker := CoordinatorClient(endpoint, role=Role.WORKER, run_id="r1", hello={
            "info": {"rank": 0, "node_id": "n1", "round": 1, "pid": 4242}}))
        worker.connect(timeout=10)
        wait_until(lambda: events(run_dir, EventType.WORKER_STARTED), 10, "worker_started")
        first.kill()  # a crash: no shutdown recorded, the worker's worker_stopped never written
        first.wait()
        for client in clients:
            client.close()
        before = events(run_dir)

        second = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert "listening on" in second.stdout.readline()
            node = restarted_node(endpoint, "n1")
            assert node.request("join", master_port=free_port(), timeout=30)["round"] == 2
            node.request("leave", close=True, timeout=10)
            node.close()
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    finally:
        first.kill()
        first.wait()
    recorded = events(run_dir)
    assert [e["seq"] for e in recorded] == list(range(1, len(recorded) + 1)), "seq goes on, no gap, no repeat"
    after = recorded[len(before):]
    assert [e["type"] for e in after[:3]] == [EventType.COORDINATOR_STARTED, EventType.COORDINATOR_RESTARTED,
                                             EventType.WORKER_STOPPED]
    restarted = after[1]
    assert restarted["previous_pid"] == first.pid and restarted["last_seq"] == before[-1]["seq"]
    assert restarted["clean"] is False and restarted["last_round"] == 1 and restarted["workers_gone"] == [0]
    assert after[2] == {**after[2], "rank": 0, "node_id": "n1", "pid": 4242, "reason": "coordinator restarted"}
    assert [e["round"] for e in after if e["type"] == EventType.ROUND_STARTED] == [2]
    state = json.loads((run_dir / STATE_FILE).read_text())
    assert state["rendezvous"]["current"]["round"] == 2


# ------------------------------------------------------------- interpreter exit
def test_in_process_coordinator_stops_cleanly_at_interpreter_exit(tmp_path: Path) -> None:
    """A coordinator left running (as in an agent that torchrun ends by a signal without calling
    shutdown()) while other exit handlers take their time: no traceback, a recorded shutdown."""
    script = textwrap.dedent(f"""
        import atexit, time
        from pathlib import Path
        from torchrt.coordinator import Coordinator, CoordinatorConfig
        from torchrt.coordinator.client import CoordinatorClient

        coordinator = Coordinator(CoordinatorConfig(run_dir=Path({str(tmp_path / "run")!r}), port=0))
        coordinator.start()
        node = CoordinatorClient(coordinator.endpoint, role="node", run_id="x", heartbeat_interval=0.1,
                                 hello={{"node_id": "n1", "info": {{}}, "job": {{"min_nodes": 1, "max_nodes": 1}}}})
        node.connect(5)
        node.request("join", master_port=1234, timeout=10)
        atexit.register(time.sleep, 1.0)  # other exit work: ticks go on meanwhile
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Task was destroyed" not in result.stderr, result.stderr[-3000:]
    last = events(tmp_path / "run")[-1]
    assert last["type"] == EventType.SHUTDOWN and "exited" in last["reason"]


# ------------------------------------------------------------- run directory: read-only, full
def read_only_dir(tmp_path: Path, tmpfs) -> Path:
    if os.geteuid() == 0:  # chmod does not bind root: a read-only mount does
        return tmpfs("ro", read_only=True)
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o555)
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchrt: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("kind, reason", [("read-only", "Read-only file system"), ("full", "No space left")])
def test_coordinator_refuses_a_run_dir_it_cannot_write(tmp_path: Path, tmpfs, kind: str, reason: str) -> None:
    port = free_port()
    run_dir = (read_only_dir(tmp_path, tmpfs) if kind == "read-only" else fill(tmpfs("full")).parent) / "run"
    result = subprocess.run([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{port}", "--run-dir", str(run_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, f"run directory {run_dir} cannot be written")
    if os.geteuid() == 0:
        assert reason in result.stderr
    assert ping(f"127.0.0.1:{port}", timeout=0.3) is None


def test_run_refuses_a_run_dir_it_cannot_write(tmp_path: Path, tmpfs) -> None:
    run_dir, endpoint = read_only_dir(tmp_path, tmpfs) / "run", f"127.0.0.1:{free_port()}"
    result = subprocess.run([*TORCHRT, "run", str(ALLREDUCE), "--set", f"rendezvous.endpoint={endpoint}",
                             "--set", f"job.run_dir={run_dir}"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert_one_line_error(result, f"run directory {run_dir} cannot be written")
    assert ping(endpoint, timeout=0.3) is None


@pytest.mark.slow
def test_full_disk_mid_run_the_job_goes_on_and_the_record_catches_up(
        tmp_path: Path, tmpfs, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmpfs("small", size="2m") / "run"
    results = tmp_path / "results"
    results.mkdir()
    caplog.set_level(logging.WARNING, logger="torchrt.coordinator.run_dir")
    coordinator = Coordinator(CoordinatorConfig(run_dir=run_dir, port=0, run_id="full"))
    coordinator.start()
    filler = fill(run_dir.parent)  # from here on the coordinator records the job on a full disk
    # A worker crashes once: the job restarts its workers and re-forms while the disk is full
    # (and makes more events than the last page of events.jsonl has room for).
    agent = Agent(coordinator.endpoint, "1", run_dir, results, run_id="full", conf={"is_host": "false"},
                  max_restarts=1, env={"STEPS": "20", "CRASH_ONCE_FILE": str(tmp_path / "crashed")},
                  log=tmp_path / "agent.log")
    try:
        assert agent.wait(120) == 0, agent.log()  # the job goes on and finishes
        wait_until(lambda: not coordinator.snapshot()["workers"]["by_state"].get("running"), 30,
                   "the workers' connections to end")
        assert not coordinator.health.ok
        filler.unlink()
        wait_until(lambda: events(run_dir, EventType.RUN_DIR_ERROR), 15, "the run_dir_error event")
        wait_until(lambda: json.loads((run_dir / STATE_FILE).read_text())["rendezvous"]["closed"], 10,
                   "state.json to catch up")
    finally:
        agent.close()
        coordinator.stop()
    recorded = events(run_dir)
    assert [e["seq"] for e in recorded] == list(range(1, len(recorded) + 1)), "every event, in order, once"
    error = next(e for e in recorded if e["type"] == EventType.RUN_DIR_ERROR)
    assert "No space left on device" in error["error"] and error["failed_writes"] >= 1
    # events.jsonl too when the job's events outgrew the free part of its last page (see the
    # EventLog test below for that case alone)
    assert {"state.json", "tensorboard"} <= set(error["parts"]) and error["lost_events"] == 0
    assert recorded[-1]["type"] == EventType.SHUTDOWN
    assert [e["round"] for e in recorded if e["type"] == EventType.ROUND_COMPLETED] == [1, 2]
    warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run_dir / "tensorboard"))
    scalars.Reload()
    assert "rendezvous/round_total_s" in scalars.Tags()["scalars"], "scalars of the full-disk time, written later"


def test_event_log_keeps_what_a_full_disk_refused_byte_exact(tmp_path: Path, tmpfs) -> None:
    run_dir = tmpfs("tiny", size="64k") / "run"
    log = EventLog(run_dir)
    log.emit("first", payload="x" * 100)
    filler = fill(run_dir.parent)
    for i in range(50):
        log.emit("while_full", i=i, payload="y" * 300)  # some lines are half written, then refused
    assert not log.health.ok
    assert not (run_dir / "events.jsonl").read_bytes().endswith(b"\n"), "a line was cut by the full disk"
    filler.unlink()
    assert log.flush() and log.health.ok
    log.close()
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 52))


# ------------------------------------------------------------- names that become paths
@pytest.mark.parametrize("bad", ["", ".", "..", "../../x", "a/b", "a\\b", "x\x00y", "tab\tid", "é" * 101])
def test_run_ids_that_would_escape_the_runs_directory_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRunIdError, match="expected a non-empty name"):
        check_run_id(bad)
    with pytest.raises(RendezvousConfigError, match="--rdzv-id"):  # what torchrun's agent gets
        RendezvousOptions().run_dir_for(bad)


@pytest.mark.parametrize("good", ["none", "job-1.2_x", "a..b", "2024-05-01T10:00", "ジョブ"])
def test_plain_run_ids_pass(good: str) -> None:
    assert check_run_id(good) == good
    assert RendezvousOptions().run_dir_for(good).name == good


def test_coordinator_refuses_a_node_whose_run_id_is_a_path(tmp_path: Path) -> None:
    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0))
    coordinator.start()
    try:
        with pytest.raises(NodeRejectedError, match="contains a path separator"):
            node_client(coordinator.endpoint, "n1", run_id="../../etc")
        assert coordinator.run_id is None
    finally:
        coordinator.stop()


def test_cli_run_id_with_separators_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--run-id", "../../x"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_one_line_error(result, "--run-id", "contains a path separator")
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "x").exists()


# ------------------------------------------------------------- the "listening on" line
def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: a process writing to it blocks in ``write`` until the
    other end is read, which holds it at its first print for as long as the test needs."""
    import fcntl

    read_end, write_end = os.pipe()
    flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(write_end, b"\n" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags)
    return read_end, write_end


def blocked_writing_stdout(pid: int) -> bool:
    """Whether the process's main thread is in write(2) on fd 1 (``/proc/PID/syscall``)."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().startswith("1 0x1 ")
    except OSError:
        return False


def test_a_sigterm_right_after_listening_on_stops_the_coordinator_cleanly(tmp_path: Path) -> None:
    """Whoever waits for "listening on" may signal at once (a supervisor, a test): the handlers
    must be in by then. The coordinator is held in the very print of that line (its stdout is a
    full pipe) and signalled there; it used to die of the SIGTERM (-15, no shutdown recorded)."""
    read_end, write_end = full_pipe()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--run-dir",
                             str(run_dir), "--no-monitor"], cwd=REPO, stdout=write_end)
    os.close(write_end)
    try:
        wait_until(lambda: blocked_writing_stdout(proc.pid) or proc.poll() is not None, 60,
                   "the coordinator to print its first line")
        proc.send_signal(signal.SIGTERM)
        with os.fdopen(read_end, "rb") as out:
            printed = out.read()
        assert b"torchrt coordinator listening on 127.0.0.1:" in printed
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert events(run_dir, EventType.SHUTDOWN)[-1]["reason"] == "terminated (SIGTERM)"


# ------------------------------------------------------------- binding without a token
def test_a_coordinator_reachable_from_other_machines_without_a_token_warns_and_records_it(tmp_path: Path) -> None:
    """0.0.0.0 without a token: a clear warning on stderr at start and an insecure_bind event;
    loopback, or a token, stays quiet."""
    run_dir, port = tmp_path / "open", free_port()
    proc = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"0.0.0.0:{port}", "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_until(lambda: events(run_dir, EventType.INSECURE_BIND), 30, "the insecure_bind event")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert "without a token" in stderr and "0.0.0.0" in stderr
    for host, token in (("127.0.0.1", None), ("0.0.0.0", "s3cret")):
        quiet = Coordinator(CoordinatorConfig(run_dir=tmp_path / f"{host}-{bool(token)}", host=host, port=0,
                                              token=token))
        quiet.start()
        quiet.stop()
        assert events(tmp_path / f"{host}-{bool(token)}", EventType.INSECURE_BIND) == []
