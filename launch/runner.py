"""``torchrt run CONFIG``: a YAML config turned into a coordinator plus a torchrun.

Steps: load and validate the config (a bad one exits with status 2 before
anything starts); make sure a coordinator answers at ``rendezvous.endpoint``
(use a running one, start one here when this host owns the endpoint, after
checking that its run directory can be written, exit 2 if not; or leave it to
the torchrun handler's connect retries when the endpoint is remote); run
torchrun with the torchrt rendezvous backend; stop the coordinator this runner
started (telling it first that the job ended, and with what status, so that its
record's ``shutdown`` says so: :func:`launch.owner.tell_ended`); return torchrun's
exit status. The coordinator it starts also starts the
job's monitor (unless ``monitor=False``, ``--no-monitor``); the runner prints the
monitor's URL once ``coordinator.json`` has it.

Nothing outlives the runner. The coordinator and torchrun run in sessions of
their own (a terminal's Ctrl-C reaches them once, through the runner) and
both watch the runner (``--owner-pid``, :mod:`launch.owner`): when it is
SIGKILLed, torchrun stops its workers and the coordinator drains and exits.
Ctrl-C (or SIGTERM) of the runner stops the job cleanly: the coordinator is
told to drain (SIGINT: the rendezvous closes and the nodes that go are
recorded as leaving, not dying, then ``shutdown``), torchrun gets SIGTERM (it
stops its workers; SIGTERM, unlike SIGINT, makes no worker print a
``KeyboardInterrupt`` traceback). A second signal SIGKILLs torchrun and
everything under it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import psutil

from launch.owner import tell_ended
from torchrt.config import ConfigError, JobConfig, config_environment, load_config
from torchrt.contract import Env
from torchrt.coordinator.client import ping
from torchrt.coordinator.run_dir import COORDINATOR_FILE, RunDirError, ensure_writable
from torchrt.errors import CoordinatorUnavailableError, RendezvousError
from torchrt.protocol import parse_endpoint
from torchrt.rendezvous.options import ALERT_KEYS
from torchrt.rendezvous.node_info import is_local_host

logger = logging.getLogger(__name__)

__all__ = ["agent_argv", "coordinator_argv", "run_config", "torchrun_argv"]

COORDINATOR_START_TIMEOUT = 30.0
COORDINATOR_STOP_TIMEOUT = 10.0
MONITOR_URL_TIMEOUT = 30.0  # how long the runner looks for the monitor's URL to print it
_REPO_ROOT = Path(__file__).resolve().parents[1]


def torchrun_argv(config: JobConfig, is_host: bool | None = False) -> list[str]:
    """The torchrun command line for ``config``.

    ``is_host`` goes into ``--rdzv-conf``: False (the default) when this runner
    found or started the coordinator, so the agents never try to host one;
    None leaves the choice to the agent's handler.
    """
    rdzv, nodes = config.rendezvous, config.nodes
    conf: dict[str, object] = {"run_dir": config.job.run_dir}
    if rdzv.token is not None:
        conf["token"] = rdzv.token
    # "pg_backend": torchrun itself passes a "backend" argument to RendezvousParameters.
    conf.update(pg_backend=rdzv.backend, last_call_timeout=rdzv.last_call_timeout,
                rejoin_timeout=rdzv.rejoin_timeout, join_timeout=rdzv.join_timeout,
                heartbeat_interval=rdzv.heartbeat_interval, heartbeat_timeout=rdzv.heartbeat_timeout)
    conf.update({key: value for key in ALERT_KEYS if (value := getattr(rdzv, key)) is not None})  # those set
    if is_host is not None:
        conf["is_host"] = "true" if is_host else "false"
    entry = config.entrypoint
    target = ["--module", entry.module] if entry.module else [str(entry.script)]
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--rdzv-backend=torchrt",
        f"--rdzv-endpoint={rdzv.endpoint}",
        f"--rdzv-id={config.job.run_id}",
        f"--nnodes={nodes.min}:{nodes.max}",
        f"--nproc-per-node={nodes.nproc_per_node}",
        f"--max-restarts={config.job.max_restarts}",
        f"--monitor-interval={nodes.monitor_interval}",
        "--rdzv-conf", ",".join(f"{k}={v}" for k, v in conf.items()),
        *target, *entry.args,
    ]


def coordinator_argv(config: JobConfig, owner_pid: int | None = None, monitor: bool = True) -> list[str]:
    """The command that starts a coordinator for ``config`` (its token travels in TORCHRT_TOKEN),
    one that exits when process ``owner_pid`` does, with the job's monitor unless ``monitor`` is False."""
    owner = ["--owner-pid", str(owner_pid)] if owner_pid is not None else []
    return [sys.executable, "-m", "launch.cli", "coordinator", "--bind", config.rendezvous.endpoint,
            "--run-dir", config.job.run_dir, "--run-id", config.job.run_id, *owner,
            "--monitor" if monitor else "--no-monitor"]


def agent_argv(config: JobConfig, is_host: bool | None, owner_pid: int) -> list[str]:
    """:func:`torchrun_argv` run by :mod:`launch.agent`: torchrun that stops when ``owner_pid`` does."""
    torchrun = torchrun_argv(config, is_host=is_host)
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    return [sys.executable, "-m", "launch.agent", "--owner-pid", str(owner_pid), *torchrun[3:]]


def run_config(path: str, overrides: Sequence[str] = (), monitor: bool = True) -> int:
    """Run the job described by the YAML config at ``path``; return its exit status.

    2: the config is invalid or the run directory cannot be written (nothing
    was started); 1: no coordinator could be started or reached; otherwise
    torchrun's exit status.
    """
    try:
        config = load_config(path, list(overrides))
    except ConfigError as e:
        print(f"torchrt: {e}", file=sys.stderr)
        return 2
    coordinator: subprocess.Popen[bytes] | None = None
    stopper: _SignalStop | None = None
    status: int | None = None
    try:
        try:
            found, coordinator = _ensure_coordinator(config, monitor)
        except RunDirError as e:
            print(f"torchrt: {e}", file=sys.stderr)
            return 2
        except _StartError as e:
            print(f"torchrt: {e}", file=sys.stderr)
            return 1
        stopper = _SignalStop(coordinator)
        if coordinator is not None and monitor:
            _announce_monitor(Path(config.job.run_dir) / COORDINATOR_FILE, coordinator)
        status = _run_torchrun(config, overrides, is_host=False if found else config.rendezvous.is_host,
                               stopper=stopper)
        return status
    finally:
        if coordinator is not None:
            draining = stopper is not None and stopper.signals > 0
            if not draining and status is not None:  # the job ended by itself: the record says so
                draining = tell_ended(coordinator, f"the job ended: torchrun exited with status {status}")
            _stop(coordinator, draining=draining)


class _StartError(RuntimeError):
    """No coordinator could be reached or started."""


def _answers(config: JobConfig, timeout: float) -> bool:
    """Whether a coordinator answers at the endpoint; raise _StartError if it refuses us."""
    endpoint = config.rendezvous.endpoint
    try:
        return ping(endpoint, timeout=timeout, token=config.rendezvous.token) is not None
    except CoordinatorUnavailableError:
        return False
    except RendezvousError as e:
        raise _StartError(f"the coordinator at {endpoint} refused this run: {e}") from e


def _announce_monitor(described: Path, coordinator: subprocess.Popen[bytes]) -> None:
    """Print the monitor's URL once the coordinator records it in ``described`` (from a thread:
    the job does not wait for its monitor)."""
    def watch() -> None:
        deadline = time.monotonic() + MONITOR_URL_TIMEOUT
        while time.monotonic() < deadline and coordinator.poll() is None:
            try:
                url = json.loads(described.read_text(encoding="utf-8")).get("monitor_url")
            except (OSError, ValueError):
                url = None
            if url:
                print(f"torchrt monitor at {url}", flush=True)
                return
            time.sleep(0.1)

    threading.Thread(target=watch, name="torchrt-monitor-url", daemon=True).start()


def _ensure_coordinator(config: JobConfig, monitor: bool) -> tuple[bool, subprocess.Popen[bytes] | None]:
    """(a coordinator answers, the one this runner started or None)."""
    rdzv = config.rendezvous
    if _answers(config, timeout=2.0):
        logger.info("using the coordinator already running at %s", rdzv.endpoint)
        return True, None
    host, _ = parse_endpoint(rdzv.endpoint)
    owns = rdzv.is_host if rdzv.is_host is not None else is_local_host(host)
    if not owns:
        logger.info("no coordinator at %s yet; torchrun's handler will keep trying to connect", rdzv.endpoint)
        return False, None
    run_dir = ensure_writable(Path(config.job.run_dir))
    log_path = run_dir / "coordinator.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    if rdzv.token is not None:
        env[Env.TOKEN] = rdzv.token
    argv = coordinator_argv(config, owner_pid=os.getpid(), monitor=monitor)
    logger.info("starting a coordinator: %s (log: %s)", " ".join(argv), log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + COORDINATOR_START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:].strip()
                raise _StartError(f"the coordinator for {rdzv.endpoint} exited with status "
                                  f"{proc.returncode} before answering:\n{tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise _StartError(f"the coordinator started for {rdzv.endpoint} did not answer within "
                                  f"{COORDINATOR_START_TIMEOUT:g}s; see {log_path}")
            # ping's connect retries refused connections with backoff until its timeout.
            if _answers(config, timeout=min(1.0, left)):
                return True, proc
    except BaseException:
        _stop(proc)
        raise


def _run_torchrun(config: JobConfig, overrides: Sequence[str], is_host: bool | None,
                  stopper: _SignalStop) -> int:
    argv = agent_argv(config, is_host=is_host, owner_pid=os.getpid())
    env = {**os.environ, **config_environment(config.path, overrides), **config.entrypoint.env}
    logger.info("running %s", " ".join(argv))
    # Own session: a terminal's Ctrl-C reaches torchrun once, through the stopper.
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    with stopper.handling(proc):
        code = proc.wait()
    if stopper.first_signal is not None:  # stopped on request: report it as the shell would
        return 128 + stopper.first_signal
    return code if code >= 0 else 128 - code


class _SignalStop:
    """While torchrun runs, SIGINT/SIGTERM stop the job (see the module docstring)."""

    def __init__(self, coordinator: subprocess.Popen[bytes] | None) -> None:
        self.coordinator = coordinator
        self.signals = 0
        self.first_signal: int | None = None
        self._torchrun: subprocess.Popen[bytes] | None = None

    @contextmanager
    def handling(self, torchrun: subprocess.Popen[bytes]) -> Iterator[None]:
        self._torchrun = torchrun
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: signals stay where they are
            logger.debug("signals are not handled: run_config is not on the main thread")
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        torchrun = self._torchrun
        if torchrun is None or torchrun.poll() is not None:
            return
        if self.signals == 1:
            self.first_signal = signum
            logger.info("got %s: stopping the job (torchrun pid %d)", signal.Signals(signum).name, torchrun.pid)
            if self.coordinator is not None and self.coordinator.poll() is None:
                self.coordinator.send_signal(signal.SIGINT)  # drain: the job's nodes are about to go
            torchrun.send_signal(signal.SIGTERM)
        else:
            print("torchrt: stopping now: killing torchrun and its workers", file=sys.stderr, flush=True)
            _kill_tree(torchrun.pid)


def _kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and all its descendants (torchrun's workers are in sessions of their own)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in tree:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _stop(proc: subprocess.Popen[bytes], draining: bool = False) -> None:
    """Stop the coordinator this runner started: give a drain it was told of (``draining``) time
    to end by itself, else SIGTERM; SIGKILL if it is still there COORDINATOR_STOP_TIMEOUT later."""
    if draining:
        try:
            proc.wait(COORDINATOR_STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            logger.warning("the coordinator (pid %d) did not finish draining; stopping it", proc.pid)
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(COORDINATOR_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.warning("the coordinator (pid %d) ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait()
