"""The ``torchrt`` command line as a user runs it: real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agents import EXAMPLE, REPO
from tests.helpers import events, free_port

TORCHRT = [sys.executable, "-m", "launch.cli"]


def torchrt(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRT, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_doctor_passes_when_installed():
    result = torchrt("doctor")
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stdout


def test_doctor_fails_loudly_without_a_coordinator():
    result = torchrt("doctor", "--endpoint", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "FAIL  coordinator answers" in result.stderr


def test_doctor_fails_loudly_when_the_plugin_cannot_load(tmp_path):
    # A broken torchrt package first on the path: torchrun alone would only log a warning.
    broken = tmp_path / "shadow" / "torchrt"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('simulated broken install')\n")
    result = torchrt("doctor", env={"PYTHONPATH": str(tmp_path / "shadow")}, cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL  entry point" in result.stderr and "simulated broken install" in result.stderr


def test_standalone_coordinator_status_and_clean_stop(tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{port}", "--run-dir", str(run_dir),
                             "--run-id", "cli-job"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "listening on 127.0.0.1:" in proc.stdout.readline()
        status = torchrt("status", "--endpoint", f"127.0.0.1:{port}")
        assert status.returncode == 0, status.stderr
        assert "run cli-job" in status.stdout and "no round formed yet" in status.stdout
        raw = torchrt("status", "--endpoint", f"127.0.0.1:{port}", "--json")
        assert json.loads(raw.stdout)["state"]["coordinator"]["run_id"] == "cli-job"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert [e["type"] for e in events(run_dir)][-1] == "shutdown"
    assert json.loads((run_dir / "coordinator.json").read_text())["port"] == port


@pytest.mark.parametrize("argv, says", [
    (["coordinator", "--bind", "127.0.0.1:abc"], "argument --bind: bad endpoint '127.0.0.1:abc'"),
    (["coordinator", "--bind", "::1:29400"], "needs brackets"),
    (["coordinator", "--bind", "127.0.0.1:70000"], "out of range"),
    (["coordinator", "--owner-pid", "me"], "argument --owner-pid: expected a process id"),
    (["coordinator", "--run-id", ""], "argument --run-id: expected a non-empty name"),
    (["coordinator", "--token-file", "/nonexistent/token"], "token file /nonexistent/token: cannot be read"),
    (["status", "--endpoint", "host:port"], "argument --endpoint"),
    (["status", "--events", "many"], "argument --events: invalid int value"),
    (["--log-level", "loud", "status"], "argument --log-level: expected one of DEBUG"),
    (["coordinator", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["launch"], "argument command: invalid choice: 'launch'"),
    (["run"], "the following arguments are required: config"),
])
def test_cli_mistakes_are_one_line_errors(argv, says):
    result = torchrt(*argv, timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchrt: ") and says in lines[0], result.stderr


def test_coordinator_reads_its_token_from_a_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s\u00e9cret-\u2603\n")  # Unicode, with the newline an editor adds
    port = free_port()
    proc = subprocess.Popen([*TORCHRT, "coordinator", "--bind", f"127.0.0.1:{port}", "--run-dir",
                             str(tmp_path / "run"), "--token-file", str(token_file)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "listening on" in proc.stdout.readline()
        assert "--token-file" not in " ".join(sys.argv) and "s\u00e9cret" not in " ".join(proc.args)
        ok = torchrt("status", "--endpoint", f"127.0.0.1:{port}", "--token-file", str(token_file))
        assert ok.returncode == 0, ok.stderr
        refused = torchrt("status", "--endpoint", f"127.0.0.1:{port}", env={"TORCHRT_TOKEN": "wrong"})
        assert refused.returncode == 1 and "token" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _torchrun_flags(text: str) -> set[str]:
    """Every torchrun option the text uses: on `torchrun ...` command lines (with their
    continuation lines) and wherever a `--rdzv-*` flag is named."""
    flags: set[str] = set(re.findall(r"(--rdzv[-_][a-z_-]+)", text))
    command: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("torchrun ") or (command and command[-1].endswith("\\")):
            command.append(stripped)
        elif command:
            flags |= {f.split("=")[0] for f in " ".join(command).split() if f.startswith("--")}
            command = []
    return flags


def test_readme_uses_only_flags_torchrun_accepts():
    from torch.distributed.run import get_args_parser

    accepted = {s for action in get_args_parser()._actions for s in action.option_strings}
    used = _torchrun_flags((REPO / "README.md").read_text())
    assert {"--rdzv-backend", "--rdzv-endpoint", "--nnodes"} <= used, used  # the quick start is read
    assert used <= accepted, f"torchrun {torch_version()} rejects {sorted(used - accepted)}"


def torch_version() -> str:
    import torch

    return torch.__version__


def test_run_rejects_bad_config_with_exit_2(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("job: {name: x}\nnodes: {min: 1, nproc_per_node: two}\n"
                      f"entrypoint: {{script: {EXAMPLE}}}\n")
    result = torchrt("run", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr and "nodes.nproc_per_node" in result.stderr


@pytest.mark.slow
def test_run_executes_a_config_end_to_end(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    run_dir = tmp_path / "run"
    result = torchrt("run", str(REPO / "configs" / "allreduce.yaml"),
                     "--set", f"rendezvous.endpoint=127.0.0.1:{free_port()}", "--set", f"job.run_dir={run_dir}",
                     "--set", "nodes.max=1", env={"RESULT_DIR": str(results)}, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = sorted(json.loads(p.read_text())["rank"] for p in results.glob("rank*.json"))
    assert ranks == [0, 1]
    record = events(run_dir)
    kinds = [e["type"] for e in record]
    assert kinds[0] == "coordinator_started" and kinds[-1] == "shutdown" and "round_completed" in kinds
    # the coordinator was told the job had ended: its shutdown is not recorded as a SIGTERM
    assert record[-1]["reason"] == "the job ended: torchrun exited with status 0"
    assert not Path(run_dir, "coordinator.log").read_text().count("Traceback")


@pytest.mark.slow
def test_run_trains_checkpoints_and_resumes_at_another_world_size(tmp_path):
    results, run_dir, ckpt_dir = tmp_path / "results", tmp_path / "run", tmp_path / "ckpt"
    results.mkdir()

    def train(epochs: int, nproc: int) -> dict:
        result = torchrt("run", str(REPO / "configs" / "digits.yaml"),
                         "--set", f"rendezvous.endpoint=127.0.0.1:{free_port()}", "--set", f"job.run_dir={run_dir}",
                         "--set", "nodes.max=1", "--set", f"nodes.nproc_per_node={nproc}",
                         "--set", f"checkpoint.dir={ckpt_dir}",
                         env={"RESULT_DIR": str(results), "EPOCHS": str(epochs)}, timeout=240)
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads((results / "train.json").read_text())

    first = train(epochs=1, nproc=2)
    assert first["resumed_from"] is None
    assert [h["samples"] for h in first["history"]] == [1797], "every digit exactly once in the epoch"
    second = train(epochs=2, nproc=1)  # resumes the 2-worker job's checkpoint with 1 worker
    assert second["resumed_from"] is not None and second["world_size"] == 1
    assert [(h["epoch"], h["samples"]) for h in second["history"]] == [(1, 1797)]
    assert second["history"][0]["accuracy"] > first["history"][0]["accuracy"]
    kinds = [e["type"] for e in events(run_dir)]
    assert {"dataset_registered", "checkpoint_committed", "checkpoint_restored"} <= set(kinds)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), "loss and checkpoint scalars"


@pytest.mark.parametrize("setting, argv, starts", [
    (None, [], True),                     # the default: run and coordinator start their monitor
    ("off", [], False),                   # TORCHRT_MONITOR=off turns the default off ...
    ("off", ["--monitor"], True),         # ... which --monitor overrides
    (None, ["--no-monitor"], False),
])
def test_whether_run_and_coordinator_start_a_monitor(monkeypatch, setting, argv, starts):
    from launch.cli import build_parser, wants_monitor
    from torchrt.contract import Env

    monkeypatch.delenv(Env.MONITOR, raising=False)
    if setting is not None:
        monkeypatch.setenv(Env.MONITOR, setting)
    parser = build_parser()
    assert wants_monitor(parser.parse_args(["run", "job.yaml", *argv])) is starts
    assert wants_monitor(parser.parse_args(["coordinator", *argv])) is starts


def test_the_runner_tells_its_coordinator_whether_to_start_a_monitor_whatever_the_environment():
    from launch.runner import coordinator_argv
    from torchrt.config import load_config

    config = load_config(REPO / "configs" / "allreduce.yaml")
    assert coordinator_argv(config, monitor=True)[-1] == "--monitor"
    assert coordinator_argv(config, monitor=False)[-1] == "--no-monitor"
