"""``torchrt run CONFIG``: a YAML config turned into a coordinator plus a torchrun.

Steps: load and validate the config (a bad one exits with status 2 before
anything starts); make sure a coordinator answers at ``rendezvous.endpoint``
(use a running one, start one here when this host owns the endpoint, or leave
it to the torchrun handler's connect retries when the endpoint is remote);
run torchrun with the torchrt rendezvous backend, forwarding SIGINT/SIGTERM to
it; stop the coordinator this runner started; return torchrun's exit status.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from torchrt.config import ConfigError, JobConfig, config_environment, load_config
from torchrt.coordinator.client import ping
from torchrt.errors import CoordinatorUnavailableError, RendezvousError
from torchrt.protocol import parse_endpoint
from torchrt.rendezvous.node_info import is_local_host

logger = logging.getLogger(__name__)

__all__ = ["coordinator_argv", "run_config", "torchrun_argv"]

COORDINATOR_START_TIMEOUT = 30.0
COORDINATOR_STOP_TIMEOUT = 10.0
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


def coordinator_argv(config: JobConfig) -> list[str]:
    """The command that starts a coordinator for ``config`` (its token travels in TORCHRT_TOKEN)."""
    return [sys.executable, "-m", "launch.cli", "coordinator", "--bind", config.rendezvous.endpoint,
            "--run-dir", config.job.run_dir, "--run-id", config.job.run_id]


def run_config(path: str, overrides: Sequence[str] = ()) -> int:
    """Run the job described by the YAML config at ``path``; return its exit status.

    2: the config is invalid (nothing was started); 1: no coordinator could be
    started or reached; otherwise torchrun's exit status.
    """
    try:
        config = load_config(path, list(overrides))
    except ConfigError as e:
        print(f"torchrt: {e}", file=sys.stderr)
        return 2
    coordinator: subprocess.Popen[bytes] | None = None
    try:
        try:
            found, coordinator = _ensure_coordinator(config)
        except _StartError as e:
            print(f"torchrt: {e}", file=sys.stderr)
            return 1
        return _run_torchrun(config, overrides, is_host=False if found else config.rendezvous.is_host)
    finally:
        if coordinator is not None:
            _stop(coordinator)


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


def _ensure_coordinator(config: JobConfig) -> tuple[bool, subprocess.Popen[bytes] | None]:
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
    run_dir = Path(config.job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "coordinator.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    if rdzv.token is not None:
        env["TORCHRT_TOKEN"] = rdzv.token
    argv = coordinator_argv(config)
    logger.info("starting a coordinator: %s (log: %s)", " ".join(argv), log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
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


def _run_torchrun(config: JobConfig, overrides: Sequence[str], is_host: bool | None) -> int:
    argv = torchrun_argv(config, is_host=is_host)
    env = {**os.environ, **config_environment(config.path, overrides), **config.entrypoint.env}
    logger.info("running %s", " ".join(argv))
    # Own session: a terminal's Ctrl-C reaches torchrun once, through the forwarding below.
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    with _forward_signals(proc):
        code = proc.wait()
    return code if code >= 0 else 128 - code


@contextmanager
def _forward_signals(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    def forward(signum: int, _frame: FrameType | None) -> None:
        logger.info("forwarding signal %d to torchrun (pid %d)", signum, proc.pid)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: signals stay where they are
        logger.debug("signals are not forwarded: run_config is not on the main thread")
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited after COORDINATOR_STOP_TIMEOUT seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(COORDINATOR_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.warning("the coordinator (pid %d) ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait()
