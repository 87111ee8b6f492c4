"""torchrt.checkpoint across real processes: 2-rank gloo (DDP) save/restore, restore at 1 and 3 ranks.

Workers are ``torch.multiprocessing`` spawns joined into a gloo process group
over a TCPStore on a free port (what torchrun would set up, minus the agent).
Assertions that need a rank's view run in the worker; an exception there
fails the test with the worker's traceback.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from torchrt.checkpoint import CheckpointManager, RNGState, SaveStatus, StateMismatchError
from torchrt.telemetry import Reporter, set_reporter

from tests.helpers import assert_same, init_gloo, snapshot, spawn_ranks

# one worker runs this module, so its module-scoped `saved_job` is built once (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("checkpoint_dist")

REPLICATED = ("model", "optim", "data", "progress")
GLOBAL_BATCH = 16
DATA = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))


class GlobalData:
    """A torchrt.data-like pipeline: one global position, each rank takes its stride of a global batch."""

    def __init__(self, seed: int = 0) -> None:
        self.seed, self.position = seed, 0

    def next_batch(self, rank: int, world: int) -> torch.Tensor:
        perm = torch.randperm(len(DATA), generator=torch.Generator().manual_seed(self.seed))
        idx = perm[self.position:self.position + GLOBAL_BATCH][rank::world]
        self.position = (self.position + GLOBAL_BATCH) % len(DATA)
        return DATA[idx]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, sd: dict) -> None:
        self.seed, self.position = sd["seed"], sd["position"]


def build(seed: int, rank: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(1024, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(100 + rank)  # per-rank RNG streams (dropout), restored per rank
    random.seed(rank)
    np.random.seed(rank)
    data = GlobalData()
    return model, opt, data, {"model": model, "optim": opt, "data": data, "rng": RNGState(), "progress": {"step": 0}}


def train_step(net, opt, data, rank: int, world: int) -> None:
    loss = net(data.next_batch(rank, world)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _worker(rank: int, world: int, port: int, scenario: str, root: str, out: str) -> None:
    init_gloo(rank, world, port)
    events: list[dict] = []
    reporter = Reporter(events.extend, flush_interval=60)
    set_reporter(reporter)
    try:
        globals()[f"_scenario_{scenario}"](rank, world, Path(root), Path(out))
        reporter.flush()
        (Path(out) / f"events-{scenario}-{rank}.json").write_text(json.dumps(events, default=str))
    finally:
        dist.destroy_process_group()


def _scenario_train(rank: int, world: int, root: Path, out: Path) -> None:
    model, opt, data, state = build(0, rank)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ck = CheckpointManager(root, every_steps=3, replicated=REPLICATED)
    handles = {}
    for step in range(1, 7):
        train_step(ddp, opt, data, rank, world)
        state["progress"]["step"] = step
        if (h := ck.maybe_save(state, step)) is not None:  # step 3 and 6, asynchronously
            handles[step] = h
            if step == 3:
                torch.save(snapshot(model, opt), out / f"expected3-{rank}.pt")
    assert [h.wait(60) for h in handles.values()] == [SaveStatus.COMMITTED] * 2
    ck.close()
    torch.save({"final": snapshot(model, opt), "draws": (torch.rand(4), random.random(), np.random.rand())},
               out / f"expected6-{rank}.pt")

    # time-based saves: rank 0's clock decides, every rank saves the same steps
    timed = CheckpointManager(root / "timed", every_seconds=1e-9, replicated=REPLICATED)
    saved = {}
    for step in range(7, 19):
        train_step(ddp, opt, data, rank, world)
        if (h := timed.maybe_save(state, step)) is not None:
            saved[step] = h
    timed.close()
    (out / f"timed-{rank}.json").write_text(json.dumps({s: h.status.value for s, h in saved.items()}))

    # a restarted job: new objects, other weights and RNG streams, restored from step 6
    model, opt, data, state = build(seed=5, rank=rank + 7)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ck = CheckpointManager(root, replicated=REPLICATED)
    result = ck.load_latest(state)
    assert result is not None and result.step == 6 and state["progress"]["step"] == 6
    expected = torch.load(out / f"expected6-{rank}.pt")
    assert_same(snapshot(model, opt), expected["final"], f"rank {rank} after restore")
    assert (torch.equal(torch.rand(4), expected["draws"][0]) and random.random() == expected["draws"][1]
            and np.random.rand() == expected["draws"][2]), f"rank {rank}: RNG streams not restored"
    train_step(ddp, opt, data, rank, world)  # and the restored job trains on together
    ck.close()
    (out / f"restored-{rank}.json").write_text(json.dumps({"step": result.step, "bytes": result.bytes_read}))


def _scenario_resize(rank: int, world: int, root: Path, out: Path) -> None:
    check_resized_restore(rank, world, root, out)


def check_resized_restore(rank: int, world: int, root: Path, out: Path) -> None:
    """Restore the 2-rank step-6 checkpoint at ``world`` ranks: replicated state yes, per-rank no."""
    model, opt, data, state = build(seed=9, rank=rank)
    ck = CheckpointManager(root, replicated=REPLICATED)
    try:
        with pytest.raises(StateMismatchError, match="per-rank"):
            ck.load_latest(state)
        rng_before = torch.get_rng_state()
        result = ck.load_latest(state, per_rank_on_resize="keep")
        assert result is not None and result.step == 6 and result.saved_world_size == 2
        assert result.per_rank_skipped == ["rng"] and torch.equal(torch.get_rng_state(), rng_before)
        expected = torch.load(out / "expected6-0.pt")["final"]  # replicated: identical on both old ranks
        assert_same(snapshot(model, opt), expected, f"rank {rank} of {world}")
        assert data.position == 6 * GLOBAL_BATCH % len(DATA) and state["progress"]["step"] == 6
        train_step(model, opt, data, rank, world)  # and training goes on from there
    finally:
        ck.close()


def spawn(scenario: str, world: int, root: Path, out: Path) -> None:
    spawn_ranks(_worker, world, scenario, str(root), str(out))


@pytest.fixture(scope="module")
def saved_job(tmp_path_factory):
    """A 2-rank DDP run: async saves at steps 3 and 6, time-based saves, then a bit-exact restore."""
    root, out = tmp_path_factory.mktemp("ckpt"), tmp_path_factory.mktemp("out")
    spawn("train", 2, root, out)
    return root, out


def test_two_rank_async_save_commits_every_rank_shard(saved_job):
    root, out = saved_job
    manifest = json.loads((root / "step_0000000006" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["replicated_keys"] == sorted(REPLICATED)
    ranks = manifest["ranks"]
    model_tensors = [[f for f in r["tensors"] if f.startswith("model.")] for r in ranks]
    assert all(model_tensors) and not set(model_tensors[0]) & set(model_tensors[1])  # written once, spread
    assert all("rng.torch" in r["tensors"] for r in ranks)  # per-rank state: every rank writes its own
    for rank in range(2):
        kinds = [e["type"] for e in json.loads((out / f"events-train-{rank}.json").read_text())]
        assert kinds.count("checkpoint_saved") == 2 + len(json.loads((out / f"timed-{rank}.json").read_text()))
        assert ("checkpoint_committed" in kinds) == (rank == 0) and "checkpoint_failed" not in kinds
    timed = [json.loads((out / f"timed-{rank}.json").read_text()) for rank in range(2)]
    assert timed[0] == timed[1] and len(timed[0]) >= 2 and set(timed[0].values()) == {"committed"}


def test_two_rank_restore_is_bit_exact(saved_job):
    root, out = saved_job  # the workers restored into fresh objects and compared bit for bit
    for rank in range(2):
        assert json.loads((out / f"restored-{rank}.json").read_text())["step"] == 6


def test_replicated_state_restores_at_three_ranks(saved_job):
    root, out = saved_job
    spawn("resize", 3, root, out)


def test_replicated_state_restores_in_one_process(saved_job):
    root, out = saved_job
    check_resized_restore(0, 1, root, out)
