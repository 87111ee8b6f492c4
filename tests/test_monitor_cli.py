"""``torchrt monitor``, and the monitor ``torchrt coordinator`` / ``torchrt run`` start: real processes.

The replay test serves the run directory of a real finished job (tests/monitor_env.py); the
coordinator and run tests start the real commands and read what they print, ``coordinator.json``
and the monitor's own API over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from launch.monitor import SERVING
from torchrt.contract import Env
from tests.agents import REPO
from tests.helpers import free_port, get_json, http_get, wait_until
from tests.monitor_env import RANKS

pytestmark = pytest.mark.xdist_group("monitor")  # one session run for the monitor tests (tests/monitor_env.py)

TORCHRT = [sys.executable, "-m", "launch.cli"]
ALLREDUCE = REPO / "configs" / "allreduce.yaml"
START_S = 60  # a monitor process imports torch, flask and gunicorn: seconds on a busy machine


# the user's environment: the suite turns the monitor's default off (tests/conftest.py), these tests check the default
DEFAULT_ENV = {k: v for k, v in os.environ.items() if k != Env.MONITOR}


def serving_url(proc: subprocess.Popen[str], prefix: str) -> str:
    """The URL in the first line of ``proc``'s stdout that starts with ``prefix``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    raise AssertionError(f"{proc.args} exited ({proc.wait()}) without printing {prefix!r}")


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_monitor_replays_a_finished_run_with_tensorboard(finished_run_dir: Path) -> None:
    monitor = subprocess.Popen([*TORCHRT, "monitor", "--run-dir", str(finished_run_dir)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = serving_url(monitor, SERVING)
        assert url.startswith("http://127.0.0.1:")
        answer = get_json(url + "/api/v1/snapshot")
        assert answer["mode"] == "replay" and answer["snapshot"]["workers"]["total"] == RANKS
        assert answer["snapshot"]["checkpoints"]["committed_total"] >= 2
        first, last = answer["span"]
        earlier = get_json(f"{url}/api/v1/snapshot?at={first + (last - first) / 10}")
        assert earlier["snapshot"]["seq"] < answer["snapshot"]["seq"]
        for page in ("/", "/tasks", "/logs", "/settings"):
            assert http_get(url + page)[0] == 200, page
        assert http_get(url + "/no-such-page")[0] == 404
        board = wait_until(lambda: get_json(url + "/api/v1/settings").get("tensorboard_url"), START_S,
                           "TensorBoard to serve the run")
        assert board.startswith("http://127.0.0.1:")
        tags = wait_until(lambda: get_json(board + "/data/plugin/scalars/tags"), START_S, "TensorBoard's tags")
        assert any(tags.values()), tags
    finally:
        assert stop(monitor) == 0, monitor.stderr.read()[-2000:] if monitor.stderr else ""


def test_monitor_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([*TORCHRT, "monitor", "--run-dir", str(tmp_path), "--bind", "0.0.0.0"], cwd=REPO,
                            capture_output=True, text=True, timeout=START_S,
                            env={k: v for k, v in os.environ.items() if not k.startswith("TORCHRT_TOKEN")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "torchrt: the monitor binds 0.0.0.0, reachable from other machines: it needs a token (--token-file, "
        "TORCHRT_TOKEN_FILE or TORCHRT_TOKEN), or bind 127.0.0.1"]


def test_monitor_without_a_coordinator_is_a_one_line_error_after_its_wait() -> None:
    port = free_port()
    result = subprocess.run([*TORCHRT, "monitor", "--endpoint", f"127.0.0.1:{port}", "--no-tensorboard",
                             "--wait", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=START_S)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"torchrt: no coordinator answers at 127.0.0.1:{port} within 0.5 s (--wait)"]
    bad = subprocess.run([*TORCHRT, "monitor", "--wait", "0"], cwd=REPO, capture_output=True, text=True,
                         timeout=START_S)
    assert bad.returncode == 2 and "--wait: expected seconds > 0 and <= 3600, got '0'" in bad.stderr


def test_coordinator_starts_its_monitor_and_records_its_url(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    coordinator = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--run-dir",
                                    str(run_dir), "--run-id", "with-monitor"], cwd=REPO, stdout=subprocess.PIPE,
                                   text=True, env=DEFAULT_ENV)
    monitor: list[psutil.Process] = []
    try:
        url = serving_url(coordinator, "torchrt monitor at ")
        assert json.loads((run_dir / "coordinator.json").read_text())["monitor_url"] == url
        settings = get_json(url + "/api/v1/settings")
        assert settings["monitor_url"] == url and settings["run_id"] == "with-monitor"
        # The coordinator's own state says so too (what `torchrt status --json` shows), once the
        # monitor's cached snapshot (at most 100 ms old) is refreshed.
        wait_until(lambda: get_json(url + "/api/v1/snapshot")["snapshot"]["coordinator"]["monitor_url"] == url, 10,
                   "the coordinator's state to carry the monitor's URL")
        monitor = psutil.Process(coordinator.pid).children(recursive=True)
        assert monitor and all(p.status() != psutil.STATUS_ZOMBIE for p in monitor)
    finally:
        assert stop(coordinator) == 0
    # The monitor goes with the coordinator that started it.
    wait_until(lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in monitor), 30,
               "the monitor to exit with its coordinator")


def test_coordinator_no_monitor_starts_none(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    coordinator = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{free_port()}", "--run-dir",
                                    str(run_dir), "--no-monitor"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert coordinator.stdout is not None and "listening on" in coordinator.stdout.readline()
        assert psutil.Process(coordinator.pid).children() == []
        assert json.loads((run_dir / "coordinator.json").read_text())["monitor_url"] is None
    finally:
        assert stop(coordinator) == 0


def run_argv(tmp_path: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    results = tmp_path / "results"
    results.mkdir()
    return ([*TORCHRT, "run", str(ALLREDUCE), "--set", f"rendezvous.endpoint=127.0.0.1:{free_port()}",
             "--set", f"job.run_dir={tmp_path / 'run'}", "--set", "nodes.max=1", *extra],
            {**DEFAULT_ENV, "RESULT_DIR": str(results), "STEPS": "100000", "STEP_SECONDS": "0.05"})


def test_run_prints_the_monitor_url_records_it_and_takes_it_down_with_the_job(tmp_path: Path) -> None:
    argv, env = run_argv(tmp_path)
    runner = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree: list[psutil.Process] = []
    try:
        url = serving_url(runner, "torchrt monitor at ")
        assert json.loads((tmp_path / "run" / "coordinator.json").read_text())["monitor_url"] == url
        wait_until(lambda: get_json(url + "/api/v1/snapshot")["snapshot"]["workers"]["by_state"].get("running") == 2,
                   START_S, "the monitor to show the job's two workers")
        tree = psutil.Process(runner.pid).children(recursive=True)
        runner.send_signal(signal.SIGINT)
        assert runner.wait(60) == 128 + signal.SIGINT
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    wait_until(lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in tree), 15,
               "every process of the job, the monitor too, to exit")


def test_run_no_monitor(tmp_path: Path) -> None:
    argv, env = run_argv(tmp_path, "--no-monitor")
    result = subprocess.run(argv, cwd=REPO, env={**env, "STEPS": "2", "STEP_SECONDS": "0"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "monitor at" not in result.stdout
    assert json.loads((tmp_path / "run" / "coordinator.json").read_text())["monitor_url"] is None
    assert not (tmp_path / "run" / "monitor.log").exists()


@pytest.mark.parametrize("argv, says", [
    (["monitor", "--port", "70000"], "argument --port: expected a port"),
    (["monitor", "--endpoint", "host:port"], "argument --endpoint"),
    (["monitor", "--endpoint", "127.0.0.1:1", "--run-dir", "x"], "not allowed with argument"),
])
def test_monitor_argument_mistakes_are_one_line_errors(argv: list[str], says: str) -> None:
    result = subprocess.run([*TORCHRT, *argv], cwd=REPO, capture_output=True, text=True, timeout=START_S)
    assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
