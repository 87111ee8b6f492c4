"""Resume mid-epoch in real multi-process gloo jobs (``torchrun --rdzv-backend=torchrt``) at 2→2, 2→3, 4→2, 2→4.

Four torchrun jobs (each a few seconds here; the last two side by side), chained through state files:

    job 1, 2 ranks: dataset A from scratch, stop at 50 %, save S_A
    job 2, 4 ranks: A from S_A to the end (2→4); dataset B from scratch, stop at 50 %, save S_B
    job 3, 2 ranks: B from S_B to the end (4→2); A from S_A to the end (2→2)
    job 4, 3 ranks: A from S_A to the end (2→3)

Every rank writes the global indices it consumed; each chain (first half + one continuation) must
consume every sample of the epoch exactly once. The ranks of a job also check, over gloo, that
their saved states are identical. The coordinator's events.jsonl must fold (registry_view) into a
registry that shows the dataset, who read what and samples per rank adding up.

This file is also the worker script: torchrun runs it with PHASES in the environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SIZE, BATCH = 1003, 8  # 1003 divides by none of the global batches (16, 24, 32): the tail is padded


def worker() -> int:
    import torch
    import torch.distributed as dist

    import torchrt
    from torchrt.data import DataSpec, build_pipeline

    ctx = torchrt.init()
    out = Path(os.environ["RESULT_DIR"])
    for phase in json.loads(os.environ["PHASES"]):
        spec = DataSpec(name=phase["dataset"], kind="shards", path=os.environ["SHARDS"], batch_size=BATCH,
                        tail="pad", seed=11, workers=2, report_interval=0.5)
        pipe = build_pipeline(spec, ctx.rank, ctx.world_size)
        if phase.get("resume"):
            pipe.load_state_dict(json.loads(Path(phase["resume"]).read_text()))
        stop = len(pipe) // 2 if phase.get("save") else None
        consumed: list[int] = []
        for step, batch in enumerate(pipe):
            consumed += batch["index"][batch["mask"]].tolist()
            if stop is not None and step + 1 == stop:
                break
        state = pipe.state_dict()
        pipe.close()
        states: list[dict] = [{} for _ in range(ctx.world_size)]
        dist.all_gather_object(states, state)
        if any({**s, "world_size": 0} != {**state, "world_size": 0} for s in states):
            raise RuntimeError(f"ranks saved different states: {states}")
        total = torch.tensor([len(consumed)])
        dist.all_reduce(total)
        tag = phase["tag"]
        (out / f"{tag}.rank{ctx.rank}.json").write_text(json.dumps({
            "rank": ctx.rank, "world_size": ctx.world_size, "indices": consumed, "state": state,
            "job_total": int(total)}))
        if phase.get("save") and ctx.rank == 0:
            Path(phase["save"]).write_text(json.dumps(state))
    torchrt.barrier("data-end")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker())


# ----------------------------------------------------------------------------------------------- tests
from torchrt.data.events import registry_view  # noqa: E402
from torchrt.data.shards import write_shards  # noqa: E402
from torchrt.data.sources import SyntheticSource  # noqa: E402

from tests.helpers import events, free_port  # noqa: E402

pytestmark = pytest.mark.slow


class Job:
    """One single-node ``torchrun --rdzv-backend=torchrt`` job of ``nproc`` workers running this file."""

    def __init__(self, tmp: Path, name: str, nproc: int, phases: list[dict], shards: Path) -> None:
        self.name, self.nproc = name, nproc
        self.run_dir, self.log = tmp / f"run-{name}", tmp / f"{name}.log"
        argv = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend=torchrt",
                f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id=data-{name}", "--nnodes=1",
                f"--nproc-per-node={nproc}", "--max-restarts=0", "--rdzv-conf", f"run_dir={self.run_dir}",
                __file__]
        env = {**os.environ, "RESULT_DIR": str(tmp), "PHASES": json.dumps(phases), "SHARDS": str(shards),
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)

    def finish(self, timeout: float = 120) -> Path:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = "timeout"
        finally:
            self._out.close()
        assert rc == 0, f"job {self.name} ({self.nproc} ranks) ended with {rc}:\n{self.log.read_text()[-5000:]}"
        return self.run_dir


def consumed(tmp: Path, tag: str, world: int) -> list[int]:
    records = [json.loads((tmp / f"{tag}.rank{r}.json").read_text()) for r in range(world)]
    assert {r["world_size"] for r in records} == {world}
    out = [i for r in records for i in r["indices"]]
    assert records[0]["job_total"] == len(out)
    return out


def test_resume_mid_epoch_at_other_world_sizes_in_real_jobs(tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, SyntheticSource(SIZE, shape=(4,), num_classes=3), shard_size=300)
    s_a, s_b = tmp_path / "S_A.json", tmp_path / "S_B.json"
    Job(tmp_path, "job1", 2, [{"tag": "A.first", "dataset": "A", "save": str(s_a)}], shards).finish()
    run2 = Job(tmp_path, "job2", 4, [{"tag": "A.2to4", "dataset": "A", "resume": str(s_a)},
                                     {"tag": "B.first", "dataset": "B", "save": str(s_b)}], shards).finish()
    job3 = Job(tmp_path, "job3", 2, [{"tag": "B.4to2", "dataset": "B", "resume": str(s_b)},
                                     {"tag": "A.2to2", "dataset": "A", "resume": str(s_a)}], shards)
    job4 = Job(tmp_path, "job4", 3, [{"tag": "A.2to3", "dataset": "A", "resume": str(s_a)}], shards)
    job3.finish()  # jobs 3 and 4 only depend on the states of jobs 1 and 2: run them side by side
    run4 = job4.finish()

    state_a = json.loads(s_a.read_text())
    steps_a = -(-SIZE // (2 * BATCH))
    assert (state_a["epoch"], state_a["position"], state_a["world_size"]) == (0, steps_a // 2 * 2 * BATCH, 2)
    first_a = consumed(tmp_path, "A.first", 2)
    assert len(first_a) == state_a["position"] and len(set(first_a)) == len(first_a)
    first_b = consumed(tmp_path, "B.first", 4)
    chains = {"2→4": (first_a, "A.2to4", 4), "2→3": (first_a, "A.2to3", 3), "2→2": (first_a, "A.2to2", 2),
              "4→2": (first_b, "B.4to2", 2)}
    for name, (first, tag, world) in chains.items():
        rest = consumed(tmp_path, tag, world)
        both = first + rest
        assert len(both) == len(set(both)), f"{name}: {len(both) - len(set(both))} samples repeated"
        assert sorted(both) == list(range(SIZE)), f"{name}: {SIZE - len(set(both))} samples lost"
        end = json.loads((tmp_path / f"{tag}.rank0.json").read_text())["state"]
        assert (end["epoch"], end["position"]) == (1, 0), f"{name}: the epoch did not end"

    # the registry as the coordinator sees it (its events.jsonl), for the 2→3 job and the 4-rank job
    view = registry_view(events(run4))["A"]
    assert (view["kind"], view["size"], view["shards"], view["world_size"], view["batch_size"]) == \
        ("shards", SIZE, 4, 3, BATCH)
    assert sorted(view["ranks"]) == [0, 1, 2] and view["ranks"][2]["assignment"]["world_size"] == 3
    assert [r["saved_world_size"] for r in view["resumes"]] == [2, 2, 2]
    per_rank = {r: v["samples"].get(0, 0) for r, v in view["ranks"].items()}
    assert sum(per_rank.values()) == SIZE - state_a["position"] and (view["epoch"], view["position"]) == (1, 0)
    view2 = registry_view(events(run2))
    assert set(view2) == {"A", "B"} and view2["B"]["world_size"] == 4
    assert sum(v["samples"].get(0, 0) for v in view2["B"]["ranks"].values()) == len(first_b)
