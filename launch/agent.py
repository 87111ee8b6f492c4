"""torchrun's elastic agent as ``torchrt run`` starts it: ``python -m launch.agent [--owner-pid PID] ARGS``.

``ARGS`` are torchrun's own (:func:`launch.runner.torchrun_argv`); they go to
``torch.distributed.run.main`` unchanged, in this process. Two things are added:

* with ``--owner-pid``, the agent stops as on SIGTERM (workers stopped, then
  exit) when the owner process is gone, SIGKILL of the owner included
  (:mod:`launch.owner`), so nothing of the job outlives ``torchrt run``;
* a stop by signal (SIGTERM, SIGINT), which torchrun reports by letting its
  ``SignalException`` escape as a traceback, is one ``torchrt:`` line and
  exit status 128 + the signal number, as a shell reports a signal death.
  Also when the signal lands where torch trips over it: raised inside torch's
  metrics wrapper before its ``start`` is set, the ``SignalException`` comes
  out as the ``UnboundLocalError`` of that wrapper's ``finally``, with the
  signal as its context (seen in CI under torch 2.13).

Anything else (a worker failure's ``ChildFailedError`` and its report)
propagates exactly as under ``torchrun``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TypeVar

__all__ = ["main"]

E = TypeVar("E", bound=BaseException)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--owner-pid"]:
        from launch.owner import watch_owner

        owner = int(args[1])
        args = args[2:]
        watch_owner(owner, lambda: os.kill(os.getpid(), signal.SIGTERM))
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(args)
    except Exception as error:
        stopped = _signal_behind(error, SignalException)
        if stopped is None:
            raise
        name = signal.Signals(stopped.sigval).name
        print(f"torchrt: torchrun (pid {os.getpid()}) got {name}; its workers were stopped", file=sys.stderr)
        return 128 + int(stopped.sigval)
    return 0


def _signal_behind(error: BaseException, kind: type[E]) -> E | None:
    """``error`` if it is a ``kind``, else the ``kind`` it was raised while handling, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
