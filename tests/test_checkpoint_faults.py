"""Real-process faults: SIGKILL in the middle of a write; a write failing for lack of room (RLIMIT_FSIZE)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from torchrt.checkpoint import CheckpointManager, SaveStatus
from torchrt.checkpoint._faults import HANG_ENV

from tests.helpers import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, resource, signal, sys, torch
from torchrt.checkpoint import CheckpointFailedError, CheckpointManager, SaveStatus
from torchrt.telemetry import Reporter, set_reporter

mode, root = sys.argv[1], sys.argv[2]
events = []
reporter = Reporter(events.extend, flush_interval=60)
set_reporter(reporter)

def state(seed, n):
    return {"w": torch.randn(n, generator=torch.Generator().manual_seed(seed)), "meta": {"seed": seed}}

if mode == "kill":
    ck = CheckpointManager(root, writer_threads=2)
    assert ck.save(state(1, 2 << 20), 1).wait(60) is SaveStatus.COMMITTED
    ck.save(state(2, 2 << 20), 2)  # the test hook stops the writers half way, then we are killed
    ck.wait()
    sys.exit("the write was supposed to hang")

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
out = {}
for policy in ("continue", "stop"):
    ck = CheckpointManager(f"{root}/{policy}", on_error=policy)
    got = [ck.save(state(1, 1 << 18), 1).wait(60).value,   # 1 MiB: fits
           ck.save(state(2, 1 << 20), 2).wait(60).value]   # 4 MiB: the file cannot grow that far
    try:
        got.append(ck.save(state(3, 1 << 18), 3).wait(60).value)
    except CheckpointFailedError as e:
        got.append("raised: " + str(e))
    out[policy] = got
    ck._shutdown()
reporter.flush()
print(json.dumps({"results": out, "events": events}))
"""


def run_worker(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def expected_state(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_sigkill_during_write_leaves_previous_checkpoint_loadable(tmp_path):
    root, reached = tmp_path / "ckpt", tmp_path / "reached"
    proc = run_worker("kill", str(root), env={HANG_ENV: f"2:{reached}"})
    try:
        wait_until(lambda: reached.exists() or proc.poll() is not None, 120, "the writer to reach mid-file")
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = root / "step_0000000002"
    assert Path(reached.read_text()).parent == partial / "rank0"  # killed while writing step 2's shard
    assert not (partial / "manifest.json").exists() and (root / "latest").read_text().strip() == "step_0000000001"

    ck = CheckpointManager(root, keep=1)
    try:
        target = {"w": torch.zeros(2 << 20), "meta": {}}
        result = ck.load_latest(target)
        assert result is not None and result.step == 1 and result.skipped == []
        assert torch.equal(target["w"], expected_state(1, 2 << 20)) and target["meta"] == {"seed": 1}
        # the job resumes and saves step 2 again: the leftovers are replaced, then step 1 retired
        target["w"].add_(1)
        assert ck.save(target, 2).wait(60) is SaveStatus.COMMITTED
        assert sorted(p.name for p in root.glob("step_*")) == ["step_0000000002"]
    finally:
        ck.close()


def test_write_failure_is_an_event_and_on_error_decides(tmp_path):
    proc = run_worker("full", str(tmp_path))
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["results"]["continue"] == ["committed", "failed", "committed"]
    stop = report["results"]["stop"]
    assert stop[:2] == ["committed", "failed"] and stop[2].startswith("raised: checkpoint step 2 failed during write")
    failed = [e for e in report["events"] if e["type"] == "checkpoint_failed"]
    assert len(failed) == 2 and all(e["step"] == 2 and e["stage"] == "write" for e in failed)
    assert all("File too large" in e["error"] and "data.0" in e["error"] for e in failed)
    for policy in ("continue", "stop"):
        assert not (tmp_path / policy / "step_0000000002").exists()  # the partial files were removed
    assert (tmp_path / "continue" / "latest").read_text().strip() == "step_0000000003"
    assert (tmp_path / "stop" / "latest").read_text().strip() == "step_0000000001"


RANK_WORKER = r"""
import json, os, sys, time, torch, torchrt
from torchrt.checkpoint import CheckpointManager

root, out = sys.argv[1], sys.argv[2]
ctx = torchrt.init(backend="gloo")
ck = CheckpointManager(root, commit_timeout=300)
handle = ck.save({"w": {"t": torch.ones(2 << 20)}}, 1)  # rank 1's writer hangs half way; the test kills it
started = time.monotonic()
status = handle.wait(300)
with open(out, "w") as f:
    json.dump({"status": status.value, "error": str(handle.error), "waited_s": time.monotonic() - started}, f)
os._exit(0)  # the process group has a dead member: skip its teardown
"""


def test_a_rank_dying_mid_save_fails_the_commit_at_once_not_at_the_timeout(tmp_path):
    """Rank 1 is SIGKILLed while writing; the coordinator sees its worker disconnect and rank 0's
    commit fails naming it, instead of waiting commit_timeout (300 s here) for its report."""
    from torchrt.coordinator import Coordinator, CoordinatorConfig

    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0, run_id="job"))
    coordinator.start()
    reached, result = tmp_path / "reached", tmp_path / "rank0.json"
    torchrt_env = {"TORCHRT_ENDPOINT": coordinator.endpoint, "TORCHRT_STORE": f"127.0.0.1:{coordinator.store_port}",
                   "TORCHRT_RUN_ID": "job", "TORCHRT_ROUND": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = []
    try:
        for rank in (0, 1):
            env = {**os.environ, **torchrt_env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            if rank == 1:
                env[HANG_ENV] = f"1:{reached}"
            procs.append(subprocess.Popen([sys.executable, "-c", RANK_WORKER, str(tmp_path / "ckpt"), str(result)],
                                          cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        wait_until(lambda: reached.exists() or procs[1].poll() is not None, 120, "rank 1's writer to reach mid-file")
        assert procs[1].poll() is None, procs[1].communicate()[0][-3000:]
        os.killpg(procs[1].pid, signal.SIGKILL)
        rank0_out = procs[0].communicate(timeout=120)[0]
        assert procs[0].returncode == 0, rank0_out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        coordinator.stop()
    outcome = json.loads(result.read_text())
    assert outcome["status"] == "failed" and "gone" in outcome["error"] and "[1]" in outcome["error"], outcome
    assert not (tmp_path / "ckpt" / "step_0000000001" / "manifest.json").exists()
