"""The faults the demo job injects on purpose (the config's ``demo.faults``), worker side.

A training loop calls :meth:`FaultInjector.before_step` with the number of the step it is about
to run. The faults (:class:`torchrt.config.DemoFaults`):

``kill_worker``  the worker of ``rank`` SIGKILLs itself before step ``step``: torchrun sees a
                 failed worker, the job restarts (``job.max_restarts``) and resumes from the
                 last committed checkpoint.
``stop_node``    the worker of ``rank`` has a helper process SIGSTOP its whole node (the
                 torchrun agent's process group and every worker under the agent, itself
                 included) for ``seconds``, then SIGCONT it: the node's heartbeats and the
                 job's collectives stall, then go on. The helper runs in a session of its own
                 (``python -m launch.faults``) and resumes the node early when it is told to stop.
``slow_rank``    the worker of ``rank`` gets its data ``delay`` seconds late in each step from
                 ``from_step`` to ``until_step``: a rank with a slow loader, the straggler of
                 data-parallel training. The sleep is told to the rank's pipeline
                 (:meth:`torchrt.data.ShardedPipeline.note_wait`), so it counts as the step's data
                 wait and in the dataset's ``data_timing``, as a pipeline that delivers late would:
                 the Datasets page shows the rank waiting, the others wait for it in the
                 collectives, and the alert rules flag it on its ``data_wait_ms``.

``kill_worker`` and ``stop_node`` fire once per *job*: the first rank to reach one adds 1 to a
counter in the coordinator's store (:func:`torchrt.contract.demo_fault_key`), which lives
outside any round, and fires only when it read 1. A restarted job that passes the step again
(it resumed from an earlier checkpoint) finds 2 and goes on; so does a rank whose node was
moved to another host, which a marker file in one host's run directory would not catch.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:  # the stop_node helper imports nothing of torchrt: it must start fast
    from torchrt.config import DemoFaults
    from torchrt.data import ShardedPipeline

logger = logging.getLogger(__name__)

__all__ = ["FaultInjector", "stop_processes"]


class FaultInjector:
    """The faults of ``faults`` that concern the worker of ``rank`` in job ``run_id``, which reads
    its batches from ``data``."""

    def __init__(self, faults: DemoFaults, rank: int, run_id: str | None, data: ShardedPipeline) -> None:
        self.faults = faults
        self.rank = rank
        self.run_id = run_id or "job"
        self.data = data

    def before_step(self, step: int) -> None:
        """Inject what is due before ``step`` (may not return: ``kill_worker``)."""
        slow = self.faults.slow_rank
        if slow and slow.rank == self.rank and slow.from_step <= step <= (slow.until_step or step):
            time.sleep(slow.delay)
            self.data.note_wait(slow.delay)
        stop = self.faults.stop_node
        if stop and stop.rank == self.rank and stop.step == step and self._first("stop_node"):
            self._stop_node(stop.seconds, step)
        kill = self.faults.kill_worker
        if kill and kill.rank == self.rank and kill.step == step and self._first("kill_worker"):
            self._kill(step)

    def _first(self, fault: str) -> bool:
        """Whether this is the first time in the job that a rank reached ``fault``."""
        from torchrt.contract import demo_fault_key
        from torchrt.distributed import job_store

        return int(job_store().add(demo_fault_key(self.run_id, fault), 1)) == 1

    def _kill(self, step: int) -> None:
        from torchrt.telemetry import get_reporter

        print(f"demo fault: rank {self.rank} (pid {os.getpid()}) kills itself before step {step}",
              file=sys.stderr, flush=True)
        get_reporter().flush()  # its last step report reaches the coordinator before it dies
        os.kill(os.getpid(), signal.SIGKILL)

    def _stop_node(self, seconds: float, step: int) -> None:
        agent = os.getppid()  # torchrun's agent starts its workers itself
        print(f"demo fault: rank {self.rank} stops its node (agent pid {agent}) for {seconds:g}s before step "
              f"{step}", file=sys.stderr, flush=True)
        subprocess.Popen([sys.executable, "-m", "launch.faults", "--seconds", str(seconds), str(agent)],
                         start_new_session=True, stdin=subprocess.DEVNULL)  # it stops this process too


def _node(agent: int) -> list[psutil.Process]:
    """The agent, the rest of its process group, and every process under it."""
    try:
        root = psutil.Process(agent)
        group = os.getpgid(agent)
        found = {root, *root.children(recursive=True)}
    except (psutil.Error, ProcessLookupError):
        return []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == group:
                found.add(proc)
        except (ProcessLookupError, PermissionError):
            pass
    return [p for p in found if p.pid != os.getpid()]


def stop_processes(processes: list[psutil.Process], seconds: float, woken: threading.Event | None = None) -> None:
    """SIGSTOP ``processes``, wait ``seconds`` (or until ``woken`` is set), SIGCONT them."""
    for sig in (signal.SIGSTOP, signal.SIGCONT):
        for proc in processes:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        if sig == signal.SIGSTOP:
            (woken or threading.Event()).wait(seconds)


def main(argv: list[str] | None = None) -> int:
    """``python -m launch.faults --seconds S AGENT_PID``: the ``stop_node`` helper."""
    parser = argparse.ArgumentParser(prog="python -m launch.faults")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("agent", type=int)
    args = parser.parse_args(argv)
    woken = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # told to go: resume the node first
        signal.signal(sig, lambda *_: woken.set())
    stop_processes(_node(args.agent), args.seconds, woken)
    return 0


if __name__ == "__main__":
    sys.exit(main())
