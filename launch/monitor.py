"""``torchrt monitor``, and the monitor process ``torchrt coordinator`` (hence ``torchrt run``) starts.

:func:`serve_monitor` is the command: a :class:`~monitor.live_source.LiveSource` on a coordinator's
endpoint, or a :class:`~monitor.replay_source.ReplaySource` on a finished run's directory, served by
gunicorn (:func:`monitor.serve.serve_gunicorn`; 127.0.0.1, a free port unless told; another
address needs a token), with TensorBoard alongside on the run's event files unless
``--no-tensorboard``. Its first line on stdout is :data:`SERVING` and the URL, once the app is
built; it runs until SIGINT/SIGTERM or until its owner (``--owner-pid``) exits.

:func:`start_monitor_process` is how a coordinator starts its job's monitor: in a process of its
own (the web server and TensorBoard never take the coordinator loop's GIL), in a session of its
own (a terminal's Ctrl-C goes to the coordinator, which drains; the monitor ends when the
coordinator does, through ``--owner-pid``), logging to ``RUN_DIR/monitor.log``. A monitor that
fails to start or dies later is logged and nothing else: the job never depends on it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from torchrt.contract import Env
from torchrt.coordinator.records import TENSORBOARD_DIR

if TYPE_CHECKING:
    from flask import Flask

    from monitor.sources import ViewSource

logger = logging.getLogger(__name__)

__all__ = ["SERVING", "monitor_argv", "serve_monitor", "start_monitor_process"]

SERVING = "torchrt monitor serving on "
_REPO_ROOT = Path(__file__).resolve().parents[1]


def serve_monitor(*, endpoint: str | None, run_dir: str | None, token: str | None, bind: str, port: int,
                  tensorboard: bool, owner_pid: int | None, wait_s: float = 10.0) -> int:
    """Serve the monitor until SIGINT/SIGTERM or the owner's exit, then end the process with
    gunicorn's exit status; return 1 only if it could not listen.

    A replayed run is read here, before serving (a bad directory is an error at once); a live
    source is built in the server's worker process (it runs threads, which a fork would lose),
    after a ping here says the coordinator answers (within ``wait_s``: it may still be starting)."""
    from launch.owner import watch_owner
    from monitor.app import MonitorOptions, create_app
    from monitor.auth import check_bind
    from monitor.serve import serve_gunicorn
    from monitor.live_source import LiveSource
    from monitor.replay_source import ReplaySource
    from monitor.sources import ViewSource
    from monitor.tensorboard import start_in_background
    from torchrt.coordinator.client import ping
    from torchrt.errors import CoordinatorUnavailableError

    check_bind(bind, token)  # before connecting to anything
    replay = ReplaySource(Path(run_dir)) if run_dir is not None else None
    if replay is None:
        assert endpoint is not None
        if ping(endpoint, timeout=wait_s, token=token) is None:
            raise CoordinatorUnavailableError(f"no coordinator answers at {endpoint} within {wait_s:g} s (--wait)")

    def make_app(url: str) -> Flask:
        source: ViewSource = replay if replay is not None else LiveSource(endpoint, token=token)
        options = MonitorOptions(token=token, monitor_url=url)
        app = create_app(source, options)
        if tensorboard:
            start_in_background(lambda: _tensorboard_dir(source, run_dir),
                                on_ready=lambda board: setattr(options, "tensorboard_url", board))
        return app

    if owner_pid is not None:
        arbiter = os.getpid()
        watch_owner(owner_pid, lambda: os.kill(arbiter, signal.SIGTERM))
    try:
        code = serve_gunicorn(make_app, bind, port, token, on_serving=lambda url: print(f"{SERVING}{url}", flush=True))
    except OSError as e:
        print(f"torchrt: monitor: cannot listen on {bind}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    # Nothing is left to write, and the interpreter's teardown (torch's modules) takes seconds on a
    # busy machine: the monitor goes at once, so a job's processes are gone when the job is.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _tensorboard_dir(source: ViewSource, run_dir: str | None) -> Path | None:
    """The run's TensorBoard directory if it is on this machine (a remote coordinator's is not)."""
    if run_dir is not None:
        return Path(run_dir) / TENSORBOARD_DIR
    written = source.snapshot().get("tensorboard")
    if not written or not Path(written).parent.is_dir():
        logger.warning("no TensorBoard: the run directory of %s is not on this machine", written)
        return None
    return Path(written)


def monitor_argv(endpoint: str, owner_pid: int, tensorboard: bool = True) -> list[str]:
    """The command of a job's monitor, attached to ``endpoint`` and ending with process ``owner_pid``
    (its token, if any, travels in TORCHRT_TOKEN)."""
    return [sys.executable, "-m", "launch.cli", "monitor", "--endpoint", endpoint, "--owner-pid", str(owner_pid),
            *([] if tensorboard else ["--no-tensorboard"])]


def start_monitor_process(endpoint: str, token: str | None, log_path: Path, on_url: Callable[[str], None],
                          tensorboard: bool = True) -> subprocess.Popen[bytes] | None:
    """Start the job's monitor (see the module docstring); ``on_url(url)`` is called from a thread
    once it serves. None (and a warning) if it cannot be started at all."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop(Env.TOKEN_FILE, None)
    if token is not None:
        env[Env.TOKEN] = token
    else:
        env.pop(Env.TOKEN, None)
    argv = monitor_argv(endpoint, owner_pid=os.getpid(), tensorboard=tensorboard)
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                    start_new_session=True)
    except OSError as e:
        logger.warning("the job goes on without a monitor: it cannot be started: %s", e)
        return None
    assert proc.stdout is not None
    threading.Thread(target=_read_url, args=(proc, proc.stdout, log_path, on_url),
                     name="torchrt-monitor-url", daemon=True).start()
    return proc


def _read_url(proc: subprocess.Popen[bytes], stdout: IO[bytes], log_path: Path,
              on_url: Callable[[str], None]) -> None:
    """Hand the monitor's URL to ``on_url``, then drain its stdout until it exits."""
    first = stdout.readline().decode("utf-8", errors="replace").strip()
    if first.startswith(SERVING):
        on_url(first.removeprefix(SERVING))
    else:
        logger.warning("the job goes on without a monitor: it exited with status %s; see %s",
                       proc.wait(), log_path)
    for _ in stdout:
        pass
