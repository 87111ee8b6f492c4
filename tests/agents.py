"""Real torchrun agents as subprocesses, one process group (a "node") each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "allreduce.py"


class Agent:
    """``torchrun --rdzv-backend=torchrt`` running examples/allreduce.py (or ``script``)."""

    def __init__(self, endpoint: str, nnodes: str, run_dir: Path, result_dir: Path, *, nproc: int = 2,
                 run_id: str = "test", max_restarts: int = 0, conf: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None, script: Path = EXAMPLE) -> None:
        rdzv_conf = {"run_dir": str(run_dir), **(conf or {})}
        argv = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend=torchrt",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", f"--nnodes={nnodes}",
                f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
                "--rdzv-conf", ",".join(f"{k}={v}" for k, v in rdzv_conf.items()), str(script)]
        full_env = {**os.environ, "RESULT_DIR": str(result_dir), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log or result_dir / f"agent-{os.urandom(3).hex()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"agent did not finish in {timeout}s; log:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the whole node: the agent and every process under it (torchrun puts each
        worker in a session of its own, so killing the agent's process group is not enough)."""
        try:
            tree = [self.proc, *(p for p in psutil.Process(self.proc.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            tree = [self.proc]
        for proc in tree:
            try:
                proc.send_signal(signal.SIGKILL)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        self.proc.wait(10)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-6000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()
