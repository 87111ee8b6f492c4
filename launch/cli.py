"""``torchrt`` subcommands: run, coordinator, status, doctor.

Each subcommand is a small function taking parsed arguments and returning an
exit status; errors meant for the user are printed as one ``torchrt: ...``
line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def _cmd_run(args: argparse.Namespace) -> int:
    from launch.runner import run_config

    return run_config(args.config, args.overrides)


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from torchrt.coordinator import Coordinator, CoordinatorConfig
    from torchrt.protocol import parse_endpoint

    host, port = parse_endpoint(args.bind)
    token = args.token or os.environ.get("TORCHRT_TOKEN") or None
    run_dir = Path(args.run_dir) if args.run_dir else Path("torchrt_runs") / (args.run_id or "coordinator")
    coordinator = Coordinator(CoordinatorConfig(run_dir=run_dir, host=host, port=port,
                                                run_id=args.run_id, token=token))
    try:
        coordinator.start()
    except OSError as e:
        print(f"torchrt: cannot listen on {args.bind}: {e}", file=sys.stderr)
        return 1
    print(f"torchrt coordinator listening on {coordinator.endpoint} "
          f"(store port {coordinator.store_port}, run dir {run_dir})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    coordinator.stop()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from launch.status import print_status

    return print_status(args.endpoint, token=args.token or os.environ.get("TORCHRT_TOKEN"),
                        events=args.events, as_json=args.json, follow=args.follow)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from launch.doctor import run_doctor

    return run_doctor(args.endpoint, token=args.token or os.environ.get("TORCHRT_TOKEN"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrt", description="torchrt: a distributed training runtime "
                                                                 "for torchrun")
    parser.add_argument("--log-level", default=os.environ.get("TORCHRT_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="validate a YAML job config and run it through torchrun")
    run.add_argument("config")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config value (repeatable)")
    run.set_defaults(func=_cmd_run)

    coord = sub.add_parser("coordinator", help="run a standalone coordinator")
    coord.add_argument("--bind", default="127.0.0.1:29400", metavar="HOST:PORT")
    coord.add_argument("--run-dir", default=None)
    coord.add_argument("--run-id", default=None, help="serve only this run id (default: the first node's)")
    coord.add_argument("--token", default=None, help="shared secret nodes must present (or TORCHRT_TOKEN)")
    coord.set_defaults(func=_cmd_coordinator)

    status = sub.add_parser("status", help="membership, rounds and recent events of a job")
    status.add_argument("--endpoint", default="127.0.0.1:29400", metavar="HOST:PORT")
    status.add_argument("--token", default=None)
    status.add_argument("--events", type=int, default=15, help="how many recent events to show")
    status.add_argument("--json", action="store_true", help="print the raw state as JSON")
    status.add_argument("--follow", action="store_true", help="then print events live as they happen")
    status.set_defaults(func=_cmd_status)

    doctor = sub.add_parser("doctor", help="check that torchrun sees the plug-in and the endpoint answers")
    doctor.add_argument("--endpoint", default=None, metavar="HOST:PORT")
    doctor.add_argument("--token", default=None)
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except Exception as e:
        from torchrt.errors import RendezvousError  # lazily: `doctor` must run on a broken install

        if not isinstance(e, RendezvousError):
            raise
        print(f"torchrt: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
