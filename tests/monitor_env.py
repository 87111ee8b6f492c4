"""Real jobs for the monitor's tests: a live one to watch, and a finished run directory to replay.

:class:`LiveJob` runs a coordinator in this process (port 0, loopback, optionally with a token)
and two real ``torchrun --rdzv-backend=torchrt`` agents (two "nodes") of two workers each,
running tests/monitor_worker.py: DDP on the digits through ``torchrt.data`` (previews on),
``torchrt.checkpoint`` commits every few steps, ``torchrt.step`` reports, a user metric, a barrier
per epoch. The job steps until :meth:`LiveJob.stop` touches its stop file, so a test waits on
what the coordinator shows (:meth:`LiveJob.wait_for`), never on time.

:func:`finished_run` runs such a job until it has committed two checkpoints, sent previews and
had one stack dump taken (an operator's, over the control port), then ends it cleanly: the
workers exit 0, the nodes close the rendezvous, the coordinator shuts down. The run directory it
returns holds everything a replay reads (events.jsonl, series/, state.json, stacks/1.json,
tensorboard/). It takes about 15 s on two cores; :func:`finished_run_dir` is a session-scoped
fixture that makes one per test session (import it into a test module to use it)::

    from tests.monitor_env import LiveJob, finished_run_dir  # noqa: F401 (a fixture)

    def test_replay(finished_run_dir): ...

    def test_live(tmp_path):
        with LiveJob(tmp_path, token="s3cret") as job:
            job.wait_for(lambda s: s["workers"]["by_state"].get("running") == 4, "4 running ranks")
            ... job.endpoint, job.token, job.run_dir ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from torchrt.contract import EventType, Op, Role
from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig
from torchrt.view.fold import ViewQueryError

from tests.agents import Agent
from tests.helpers import events, wait_until

__all__ = ["JOB_S", "LiveJob", "NODES", "NPROC", "RANKS", "finished_run", "finished_run_dir"]

WORKER = Path(__file__).with_name("monitor_worker.py")
NODES, NPROC = 2, 2
RANKS = NODES * NPROC
RUN_ID = "monitor-test"
JOB_S = 90  # the longest any wait on the job may take (two cores shared by everyone)


class LiveJob:
    """A coordinator and a running two-node job (see the module docstring); a context manager.

    ``step_s``: the workers' sleep per step; ``ckpt_every``: steps between checkpoints."""

    def __init__(self, tmp_path: Path, *, token: str | None = None, step_s: float = 0.05,
                 ckpt_every: int = 10) -> None:
        self.base = Path(tmp_path)
        self.run_dir = self.base / "run"
        self.token = token
        self._stop_file = self.base / "stop"
        self._env = {"STOP_FILE": str(self._stop_file), "CKPT_DIR": str(self.base / "ckpt"), "STEP_S": str(step_s),
                     "CKPT_EVERY": str(ckpt_every), "OMP_NUM_THREADS": "1"}
        self.coordinator: Coordinator | None = None
        self.agents: list[Agent] = []

    @property
    def endpoint(self) -> str:
        assert self.coordinator is not None, "the job is not started"
        return self.coordinator.endpoint

    # ------------------------------------------------------------- lifecycle
    def start(self) -> LiveJob:
        self.coordinator = Coordinator(CoordinatorConfig(run_dir=self.run_dir, port=0, token=self.token,
                                                         run_id=RUN_ID))
        self.coordinator.start()
        results = self.base / "results"
        results.mkdir(exist_ok=True)
        conf = {"is_host": "false"}
        if self.token is not None:  # from a file: a token on torchrun's command line shows in ps
            token_file = self.base / "token"
            token_file.write_text(self.token)
            conf["token_file"] = str(token_file)
        self.agents = [Agent(self.endpoint, str(NODES), self.run_dir, results, nproc=NPROC, run_id=RUN_ID,
                             conf=conf, env=self._env, script=WORKER, log=results / f"agent-{i}.log")
                       for i in range(NODES)]
        return self

    def __enter__(self) -> LiveJob:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self, timeout: float = JOB_S) -> None:
        """End the job cleanly: the workers stop at the same step and exit 0, the nodes close the
        rendezvous and leave, and the coordinator records its shutdown and stops."""
        assert self.coordinator is not None
        self._stop_file.touch()
        for agent in self.agents:
            assert agent.wait(timeout) == 0, agent.log()
        wait_until(lambda: events(self.run_dir, EventType.RENDEZVOUS_CLOSED), 10, "the nodes to close the job")
        wait_until(lambda: not self.snapshot()["workers"]["by_state"].get("running"), 10,
                   "the workers' connections to end")
        self.coordinator.stop()

    def close(self) -> None:
        """Kill whatever is still running (after a failure); idempotent."""
        for agent in self.agents:
            agent.close()
        if self.coordinator is not None:
            self.coordinator.stop()

    # ----------------------------------------------------------------- reads
    def snapshot(self) -> dict[str, Any]:
        """The coordinator's state (what the status op's ``state`` carries)."""
        assert self.coordinator is not None
        return self.coordinator.snapshot()

    def wait_for(self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = JOB_S) -> Any:
        """Wait until ``predicate(snapshot)`` is true; fail with the agents' logs if it never is."""
        def check() -> Any:
            for agent in self.agents:
                if agent.proc.poll() is not None:
                    raise AssertionError(f"an agent exited ({agent.proc.returncode}) while waiting for {what}:\n"
                                         f"{agent.log()}")
            return predicate(self.snapshot())

        return wait_until(check, timeout, what, interval=0.1)

    def series_seconds(self, part: str, subject: str, measure: str) -> int:
        """How many closed 1 s points the coordinator's view has of a series (0: none yet)."""
        assert self.coordinator is not None

        def count(view: Any) -> int:
            try:
                return len(view.points(part, subject, measure)["t"])
            except ViewQueryError:
                return 0

        return self.coordinator.read_view(count)

    def wait_running(self, steps: int = 1) -> dict[str, Any]:
        """Every rank running and past ``steps`` steps (from the live step reports)."""
        return self.wait_for(lambda s: s["workers"]["by_state"].get("running") == RANKS
                             and (s["workers"]["progress"]["step"]["min"] or 0) >= steps,
                             f"{RANKS} running ranks past step {steps}")

    def take_stacks(self, rank: int | None = None) -> dict[str, Any]:
        """One stack dump, as ``torchrt stacks`` asks for it (an operator's ``dump_stacks``)."""
        client = CoordinatorClient(self.endpoint, role=Role.OPERATOR, token=self.token)
        try:
            client.connect(timeout=10)
            return client.request(Op.DUMP_STACKS, rank=rank, timeout=30)
        finally:
            client.close()


def committed(snapshot: dict[str, Any]) -> int:
    """How many checkpoints the job committed so far."""
    return int(snapshot["checkpoints"]["committed_total"])


def finished_run(tmp_path: Path) -> Path:
    """The run directory of a real job that committed two checkpoints, had its stacks taken once
    and ended cleanly (see the module docstring)."""
    with LiveJob(tmp_path) as job:
        job.wait_running(steps=5)
        job.take_stacks()
        job.wait_for(lambda s: committed(s) >= 2, "two committed checkpoints")
        job.wait_for(lambda s: events(job.run_dir, EventType.DATA_PROGRESS), "a data_progress report")
        # a few closed seconds of the job's rate, so a replay has a series to cut with its slider
        job.wait_for(lambda s: job.series_seconds("workers", "steps", "samples_per_s") >= 4,
                     "four seconds of the samples/s series")
        job.stop()
        return job.run_dir


@pytest.fixture(scope="session")
def finished_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run directory per test session (:func:`finished_run`); treat it as read-only."""
    return finished_run(tmp_path_factory.mktemp("finished-run"))
