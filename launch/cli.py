"""``torchrt`` subcommands: run, coordinator, monitor, status, stacks, doctor.

Each subcommand is a small function taking parsed arguments and returning an
exit status. Errors meant for the user are one ``torchrt: ...`` line on
stderr, never a traceback: a bad argument or value (a malformed ``--bind``,
a run id that is not a name, a run directory that cannot be written) exits
with status 2 before anything starts, as argparse's own usage errors do; a
failure while running (no coordinator answers, the port is taken) exits 1.

``torchrt coordinator`` stops on SIGTERM at once; on SIGINT (Ctrl-C) it
drains (closes the rendezvous and waits for the job's nodes and workers to
go, then stops; a second Ctrl-C stops at once); with ``--owner-pid`` it
drains when that process exits, which is how ``torchrt run`` ties the
coordinator it starts to itself, or when that owner writes ``ended REASON`` on
its stdin (:mod:`launch.owner`: the job ended normally, recorded as the reason).
Unless ``--no-monitor``, it also starts the job's monitor (:mod:`launch.monitor`,
a process of its own) and prints its URL, which ``coordinator.json`` records too;
a monitor that fails never stops the coordinator.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # the parser imports nothing of torchrt (see build_parser)
    import subprocess

    from torchrt.coordinator import Coordinator

logger = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``torchrt: coordinator: argument --bind: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("torchrt").strip()
        self.exit(USAGE_ERROR, f"torchrt: {where + ': ' if where else ''}{message} (see {self.prog} --help)\n")


def _endpoint(text: str) -> str:
    from torchrt.protocol import parse_endpoint

    try:
        parse_endpoint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _run_id(text: str) -> str:
    from torchrt.coordinator.run_dir import InvalidRunIdError, check_run_id

    try:
        return check_run_id(text, key="--run-id")
    except InvalidRunIdError as e:
        raise argparse.ArgumentTypeError(e.problem) from None


def _pid(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a process id (a positive integer), got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) >= 65536:
        raise argparse.ArgumentTypeError(f"expected a port (0-65535; 0: a free one), got {text!r}")
    return int(text)


def _rank(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a rank (an integer >= 0), got {text!r}")
    return int(text)


def _seconds_up_to(maximum: float) -> Callable[[str], float]:
    """An argument type: seconds > 0 and <= ``maximum``."""
    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"expected seconds > 0 and <= {maximum:g}, got {text!r}")
        return value
    return seconds


def _dump_timeout(text: str) -> float:
    from torchrt.coordinator.stacks import MAX_TIMEOUT_S

    return _seconds_up_to(MAX_TIMEOUT_S)(text)


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.upper()


def _token(args: argparse.Namespace) -> str | None:
    from torchrt.tokens import resolve_token

    return resolve_token(args.token, args.token_file)


def _cmd_run(args: argparse.Namespace) -> int:
    from launch.runner import run_config

    return run_config(args.config, args.overrides, monitor=wants_monitor(args))


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from launch.owner import listen_for_end, watch_owner
    from torchrt.contract import Env
    from torchrt.coordinator import Coordinator, CoordinatorConfig
    from torchrt.coordinator.run_dir import ensure_writable
    from torchrt.protocol import parse_endpoint

    from launch.demo import start_demo_if_asked

    args.bind = args.bind or args.address
    host, port = parse_endpoint(args.bind or _default_endpoint())
    token = _token(args)
    runs_dir = Path(os.environ.get(Env.RUNS_DIR) or "torchrt_runs")
    run_dir = ensure_writable(Path(args.run_dir) if args.run_dir else runs_dir / (args.run_id or "coordinator"))
    coordinator = Coordinator(CoordinatorConfig(run_dir=run_dir, host=host, port=port,
                                                run_id=args.run_id, token=token))
    try:
        coordinator.start()
    except OSError as e:
        print(f"torchrt: cannot listen on {args.bind}: {e.strerror or e}", file=sys.stderr)
        return 1
    interrupted = False
    demo = None  # DEMO_MODE's job: its nodes are stopped first, or a drain would wait for them to finish

    def on_sigint(_signum: int, _frame: object) -> None:
        nonlocal interrupted
        if interrupted:
            coordinator.stop_soon("interrupted twice (SIGINT)")
        else:
            interrupted = True
            if demo is not None:
                demo.terminate()
            coordinator.drain("interrupted (SIGINT)")

    def on_sigterm(_signum: int, _frame: object) -> None:
        if demo is not None:
            demo.terminate()
        coordinator.stop_soon("terminated (SIGTERM)")

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    # Announced only once the handlers are in: whoever waits for this line may signal at once.
    print(f"torchrt coordinator listening on {coordinator.endpoint} "
          f"(store port {coordinator.store_port}, run dir {run_dir})", flush=True)
    if args.owner_pid is not None:
        watch_owner(args.owner_pid, lambda: coordinator.drain(f"its owner (pid {args.owner_pid}) exited"))
        listen_for_end(sys.stdin, coordinator.drain)
    monitor = _start_monitor(coordinator, token, run_dir) if wants_monitor(args) else None
    demo = start_demo_if_asked(coordinator.endpoint, run_dir, args.run_id)
    coordinator.wait()
    if demo is not None:
        demo.stop()
    coordinator.stop()
    if monitor is not None and monitor.poll() is None:
        monitor.terminate()  # it would also go by itself: it watches this process
    return 0


def _start_monitor(coordinator: Coordinator, token: str | None, run_dir: Path) -> subprocess.Popen[bytes] | None:
    from launch.monitor import start_monitor_process

    def serving(url: str) -> None:
        coordinator.set_monitor_url(url)
        print(f"torchrt monitor at {url}", flush=True)

    return start_monitor_process(coordinator.endpoint, token, run_dir / "monitor.log", on_url=serving)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from launch.monitor import serve_monitor

    return serve_monitor(endpoint=None if args.run_dir else (args.endpoint or _default_endpoint()),
                         run_dir=args.run_dir, token=_token(args), bind=args.bind, port=args.port,
                         tensorboard=args.tensorboard, owner_pid=args.owner_pid, wait_s=args.wait)


def _cmd_status(args: argparse.Namespace) -> int:
    from launch.status import print_status

    return print_status(args.endpoint or _default_endpoint(), token=_token(args), events=args.events,
                        as_json=args.json, follow=args.follow)


def _cmd_stacks(args: argparse.Namespace) -> int:
    from launch.stacks import print_stacks

    from torchrt.contract import STACK_DUMP_TIMEOUT_S

    return print_stacks(args.endpoint or _default_endpoint(), token=_token(args), rank=args.rank,
                        timeout=args.timeout or STACK_DUMP_TIMEOUT_S, as_json=args.json,
                        include_internal=args.internal)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from launch.doctor import run_doctor

    try:
        token = _token(args)
    except ImportError:  # a broken install: run_doctor says what is broken
        token = args.token
    return run_doctor(args.endpoint, token=token)


def _default_endpoint() -> str:
    from torchrt.contract import DEFAULT_HOST, DEFAULT_PORT

    return f"{DEFAULT_HOST}:{DEFAULT_PORT}"


def _add_no_monitor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--monitor", action=argparse.BooleanOptionalAction, default=None,
                        help="start the web monitor and print its URL (default: on; TORCHRT_MONITOR=off turns the "
                             "default off)")


def wants_monitor(args: argparse.Namespace) -> bool:
    """``--monitor`` / ``--no-monitor`` when given, else on unless ``TORCHRT_MONITOR`` says off. Read
    when a command runs, not when the parser is built: ``torchrt doctor`` must work with torchrt broken."""
    if args.monitor is not None:
        return bool(args.monitor)
    from torchrt.contract import Env

    return os.environ.get(Env.MONITOR, "").strip().lower() not in ("off", "0", "false", "no")


def _add_token_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--token", default=None,
                        help=f"{what} (shows in ps: prefer --token-file or TORCHRT_TOKEN)")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help="a file holding the token (or TORCHRT_TOKEN_FILE)")


def build_parser() -> argparse.ArgumentParser:
    """The parser; it imports nothing of torchrt (``doctor`` must run on a broken install)."""
    default_endpoint = "127.0.0.1 and torchrun's default port"
    parser = _Parser(prog="torchrt", description="torchrt: a distributed training runtime for torchrun")
    parser.add_argument("--log-level", type=_log_level, default=None,
                        help=f"one of {', '.join(LOG_LEVELS)} (default: $TORCHRT_LOG_LEVEL, else WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="validate a YAML job config and run it through torchrun")
    run.add_argument("config")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config value (repeatable)")
    _add_no_monitor(run)
    run.set_defaults(func=_cmd_run)

    coord = sub.add_parser("coordinator", help="run a standalone coordinator (DEMO_MODE=true: and the demo job)")
    where = coord.add_mutually_exclusive_group()
    where.add_argument("address", nargs="?", type=_endpoint, default=None, metavar="HOST:PORT",
                       help="where to listen (the same as --bind)")
    where.add_argument("--bind", type=_endpoint, default=None, metavar="HOST:PORT",
                       help=f"default: {default_endpoint}")
    coord.add_argument("--run-dir", default=None, help="default: $TORCHRT_RUNS_DIR (torchrt_runs)/RUN_ID")
    coord.add_argument("--run-id", type=_run_id, default=None,
                       help="serve only this run id (default: the first node's)")
    _add_token_options(coord, "shared secret nodes must present")
    coord.add_argument("--owner-pid", type=_pid, default=None, metavar="PID",
                       help="drain and exit when this process exits or writes 'ended REASON' on stdin "
                            "(what `torchrt run` uses)")
    _add_no_monitor(coord)
    coord.set_defaults(func=_cmd_coordinator)

    monitor = sub.add_parser("monitor", help="the web monitor: live on a coordinator, or replaying a run directory")
    where = monitor.add_mutually_exclusive_group()
    where.add_argument("--endpoint", type=_endpoint, default=None, metavar="HOST:PORT",
                       help=f"attach live to this coordinator (default: {default_endpoint})")
    where.add_argument("--run-dir", default=None, metavar="DIR", help="replay this finished run's directory")
    _add_token_options(monitor, "the job's token (also what the monitor's pages ask for)")
    monitor.add_argument("--bind", default="127.0.0.1", metavar="HOST",
                         help="the address to serve on (default: 127.0.0.1; any other needs a token)")
    monitor.add_argument("--port", type=_port, default=0, metavar="N", help="default: a free port")
    monitor.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                         help="do not start TensorBoard on the run's event files")
    monitor.add_argument("--wait", type=_seconds_up_to(3600), default=10.0, metavar="SECONDS",
                         help="how long to wait for the coordinator to answer (default: 10)")
    monitor.add_argument("--owner-pid", type=_pid, default=None, metavar="PID",
                         help="exit when this process exits (what `torchrt coordinator` uses)")
    monitor.set_defaults(func=_cmd_monitor)

    status = sub.add_parser("status", help="a job's round, nodes, ranks (step, rate, alerts), processes and events")
    status.add_argument("--endpoint", type=_endpoint, default=None, metavar="HOST:PORT",
                        help=f"default: {default_endpoint}")
    _add_token_options(status, "the job's token")
    status.add_argument("--events", type=int, default=15, help="how many recent events to show")
    status.add_argument("--json", action="store_true", help="print the raw state as JSON")
    status.add_argument("--follow", action="store_true", help="then print events live as they happen")
    status.set_defaults(func=_cmd_status)

    stacks = sub.add_parser("stacks", help="the Python stacks of one rank or of every rank, grouped")
    stacks.add_argument("--endpoint", type=_endpoint, default=None, metavar="HOST:PORT",
                        help=f"default: {default_endpoint}")
    stacks.add_argument("--rank", type=_rank, default=None, metavar="N", help="only this rank (default: every rank)")
    stacks.add_argument("--timeout", type=_dump_timeout, default=None, metavar="SECONDS",
                        help="how long to wait for the ranks' answers (default: 2)")
    _add_token_options(stacks, "the job's token")
    stacks.add_argument("--json", action="store_true", help="print the dump as JSON")
    stacks.add_argument("--internal", action="store_true", help="also show torchrt's own threads")
    stacks.set_defaults(func=_cmd_stacks)

    doctor = sub.add_parser("doctor", help="check that torchrun sees the plug-in and the endpoint answers")
    doctor.add_argument("--endpoint", type=_endpoint, default=None, metavar="HOST:PORT")
    _add_token_options(doctor, "the job's token")
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def _default_log_level(parser: argparse.ArgumentParser) -> str:
    try:
        from torchrt.contract import Env
    except ImportError:  # a broken install: `doctor` says what is broken
        return "WARNING"
    try:
        return _log_level(os.environ.get(Env.LOG_LEVEL) or "WARNING")
    except argparse.ArgumentTypeError as e:
        parser.error(f"{Env.LOG_LEVEL}: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level or _default_log_level(parser),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("torchrt: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as e:
        from torchrt.coordinator.run_dir import RunDirError  # lazily: `doctor` must run on a broken install
        from torchrt.errors import TorchrtError

        if not isinstance(e, TorchrtError):
            raise
        print(f"torchrt: {e}", file=sys.stderr)
        return USAGE_ERROR if isinstance(e, (ValueError, RunDirError)) else 1


if __name__ == "__main__":
    sys.exit(main())
