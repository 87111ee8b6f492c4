"""The one-command demo (``./demo.sh``): a coordinator with its monitor, and two nodes training.

``python -m launch.demo [--once] [--port N] [--set KEY=VALUE ...]`` on this machine:

1. checks ``configs/demo.yaml`` with the overrides (a bad one: exit 2, nothing started);
2. starts ``torchrt coordinator`` for a fresh run (``torchrt_runs/demo-<time>``; its monitor
   prints ``torchrt monitor at URL`` at once, ``--no-monitor`` leaves it out);
3. starts the demo job against it (:func:`start_demo_job`): two nodes, each a ``torchrt run
   configs/demo.yaml`` (:func:`launch.runner.run_config`) that never hosts a coordinator, with the
   run's own checkpoint directory, so that a second demo does not resume the first;
4. waits for the job. ``--once``: stops everything and exits with the job's exit status (the
   first node's non-zero status, else 0); the coordinator is told that the demo ended
   (:func:`launch.owner.tell_ended`), so its record's ``shutdown`` says so. Otherwise the
   coordinator and the monitor stay up, to look at the finished run, until Ctrl-C.

The coordinator runs apart from the nodes, so stopping a node (``demo.faults.stop_node``) never
freezes the coordinator or the monitor, and ``DEMO_MODE=true torchrt coordinator`` is the same
thing with the coordinator in the foreground (:func:`start_demo_if_asked`).

Nothing outlives the launcher. Everything it starts runs in a session of its own (a terminal's
Ctrl-C reaches the job once, through here) and watches this process (``--owner-pid``,
:mod:`launch.owner`), so a SIGKILLed launcher takes the job with it. Ctrl-C or SIGTERM: the
nodes get SIGTERM (each runner stops its torchrun and workers) and the coordinator SIGINT
(it drains and records a clean shutdown); whatever is left of the process tree
:data:`STOP_TIMEOUT_S` later, or at a second Ctrl-C, is SIGKILLed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psutil

from launch.owner import tell_ended
from torchrt.config import ConfigError, load_config
from torchrt.contract import DEFAULT_PORT, Env

logger = logging.getLogger(__name__)

__all__ = ["DEMO_CONFIG", "DemoJob", "main", "start_demo_if_asked", "start_demo_job"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
NODES = 2
COORDINATOR_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
_TRUE = ("1", "true", "yes", "on")


def demo_overrides(endpoint: str, run_id: str, run_dir: Path, overrides: Sequence[str] = ()) -> list[str]:
    """The ``--set`` values that point the demo config at a coordinator and a fresh run; the
    caller's ``overrides`` come last and win."""
    return [f"rendezvous.endpoint={endpoint}", "rendezvous.is_host=false", f"job.run_id={run_id}",
            f"job.run_dir={run_dir}", f"checkpoint.dir={run_dir / 'checkpoints'}", *overrides]


@dataclasses.dataclass
class DemoJob:
    """The demo job's node processes (see :func:`start_demo_job`)."""

    nodes: list[subprocess.Popen[bytes]]

    def poll(self) -> int | None:
        """The job's exit status once every node has exited (the first non-zero one, else 0)."""
        codes = [node.poll() for node in self.nodes]
        if any(code is None for code in codes):
            return None
        return next((code for code in codes if code), 0)

    def wait(self) -> int:
        for node in self.nodes:
            node.wait()
        return int(self.poll() or 0)

    def terminate(self) -> None:
        """SIGTERM the nodes still running and return (each runner stops its torchrun and workers);
        what ``torchrt coordinator``'s signal handlers call."""
        for node in self.nodes:
            if node.poll() is None:
                node.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT_S, hurry: threading.Event | None = None) -> None:
        """SIGTERM the nodes still running, then SIGKILL what is left of their trees after
        ``timeout`` seconds or once ``hurry`` is set."""
        stop_tree([node.pid for node in self.nodes], signal.SIGTERM, timeout, hurry)


def start_demo_job(endpoint: str, run_dir: Path, run_id: str, *, overrides: Sequence[str] = (),
                   config: Path = DEMO_CONFIG, owner_pid: int | None = None,
                   env: dict[str, str] | None = None) -> DemoJob:
    """Start the demo job's :data:`NODES` nodes against the coordinator at ``endpoint`` (which must
    be running); they stop when process ``owner_pid`` (default: this one) exits."""
    argv = [sys.executable, "-m", "launch.demo", "node", "--owner-pid", str(owner_pid or os.getpid()), str(config)]
    for value in demo_overrides(endpoint, run_id, run_dir, overrides):
        argv += ["--set", value]
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p)
    logger.info("starting the demo job: %d x %s", NODES, " ".join(argv))
    return DemoJob([subprocess.Popen(argv, env=full_env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                     start_new_session=True) for _ in range(NODES)])


def start_demo_if_asked(endpoint: str, run_dir: Path, run_id: str | None) -> DemoJob | None:
    """What ``torchrt coordinator`` calls once it listens: with ``DEMO_MODE=true`` in the
    environment, start the demo job against it (in ``run_dir``, which the coordinator owns);
    the nodes stop when the coordinator's process exits. None when DEMO_MODE is not set."""
    if os.environ.get(Env.DEMO_MODE, "").strip().lower() not in _TRUE:
        return None
    print(f"torchrt: {Env.DEMO_MODE}: starting the demo job ({DEMO_CONFIG.name}, {NODES} nodes)", flush=True)
    return start_demo_job(endpoint, run_dir, run_id or "demo")


def stop_tree(pids: Sequence[int], sig: signal.Signals | None, timeout: float,
              hurry: threading.Event | None = None) -> None:
    """Send ``sig`` to the processes ``pids`` (None: they were told to stop otherwise); SIGKILL what
    is left of them and of every process under them (as they were when this was called) after
    ``timeout`` or once ``hurry`` is set."""
    tree: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree += [root, *root.children(recursive=True)]
            if sig is not None:
                root.send_signal(sig)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(tree, timeout=0)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline and not (hurry and hurry.is_set()):
        _, alive = psutil.wait_procs(alive, timeout=0.1)
    for proc in alive:
        logger.warning("demo: process %d did not stop; killing it", proc.pid)
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


class _Stop(Exception):
    """Ctrl-C or SIGTERM: stop the demo."""


def _run(args: argparse.Namespace) -> int:
    run_id = args.run_id or time.strftime("demo-%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir or Path(os.environ.get(Env.RUNS_DIR) or "torchrt_runs") / run_id).resolve()
    endpoint = f"127.0.0.1:{args.port}"
    try:  # the nodes check it too, but only after the coordinator started
        load_config(args.config, demo_overrides(endpoint, run_id, run_dir, args.overrides))
    except ConfigError as e:
        print(f"torchrt: {e}", file=sys.stderr)
        return 2
    hurry = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping:
            hurry.set()
            return
        raise _Stop(signal.Signals(signum).name)

    stopping = False
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    coordinator: subprocess.Popen[bytes] | None = None
    job: DemoJob | None = None
    code = 1
    ended = False  # --once and the job ended by itself: the coordinator is told so, not interrupted
    try:
        print(f"demo: {NODES} nodes x the workers of {Path(args.config).name} on {endpoint}, run dir {run_dir}",
              flush=True)
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "coordinator", "--bind", endpoint, "--run-dir", str(run_dir),
             "--run-id", run_id, "--owner-pid", str(os.getpid()), "--monitor" if args.monitor else "--no-monitor"],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, start_new_session=True)
        if not _wait_for_coordinator(endpoint, coordinator):
            print(f"torchrt: the demo's coordinator at {endpoint} did not start (is the port taken? "
                  "try --port)", file=sys.stderr)
            return 1
        job = start_demo_job(endpoint, run_dir, run_id, overrides=args.overrides, config=Path(args.config))
        code = job.wait()
        print(f"demo: training finished with exit status {code}; the run is recorded in {run_dir}", flush=True)
        if not args.once:
            print("demo: the coordinator and the monitor stay up: Ctrl-C to stop", flush=True)
            coordinator.wait()
        ended = True
        return code
    except _Stop as stop:
        print(f"demo: {stop}: stopping every process of the demo", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT if str(stop) == "SIGINT" else 128 + signal.SIGTERM
    finally:
        stopping = True
        if job is not None:
            job.stop(hurry=hurry)
        if coordinator is not None:
            told = ended and tell_ended(coordinator, f"the demo ended: training finished with exit status {code}")
            # told: it drains with that reason by itself; else SIGINT: drain, as "interrupted"
            stop_tree([coordinator.pid], None if told else signal.SIGINT, STOP_TIMEOUT_S, hurry)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_coordinator(endpoint: str, coordinator: subprocess.Popen[bytes]) -> bool:
    from torchrt.coordinator.client import ping

    deadline = time.monotonic() + COORDINATOR_START_TIMEOUT_S
    while time.monotonic() < deadline and coordinator.poll() is None:
        if ping(endpoint, timeout=1.0) is not None:
            return True
    return False


def _node(args: argparse.Namespace) -> int:
    """One node of the demo job: ``torchrt run CONFIG --no-monitor`` that stops with its owner."""
    from launch.owner import watch_owner
    from launch.runner import run_config

    watch_owner(args.owner_pid, lambda: os.kill(os.getpid(), signal.SIGTERM))
    return run_config(args.config, args.overrides, monitor=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="exit with the job's exit status when training ends")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the coordinator's port on 127.0.0.1")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="default: configs/demo.yaml")
    parser.add_argument("--run-id", default=None, help="default: demo-<date>-<time>")
    parser.add_argument("--run-dir", default=None, help="default: $TORCHRT_RUNS_DIR (torchrt_runs)/RUN_ID")
    parser.add_argument("--no-monitor", dest="monitor", action="store_false", help="no web monitor")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value of the config (repeatable), e.g. demo.epochs=2")
    parser.set_defaults(func=_run)
    return parser


def _node_parser() -> argparse.ArgumentParser:
    """``python -m launch.demo node --owner-pid PID CONFIG [--set ...]`` (what start_demo_job runs)."""
    node = argparse.ArgumentParser(prog="python -m launch.demo node")
    node.add_argument("--owner-pid", type=int, required=True)
    node.add_argument("config")
    node.add_argument("--set", dest="overrides", action="append", default=[])
    node.set_defaults(func=_node)
    return node


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _node_parser().parse_args(argv[1:]) if argv[:1] == ["node"] else build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get(Env.LOG_LEVEL) or "WARNING",
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
