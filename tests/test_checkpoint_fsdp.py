"""FSDP2 / DTensor state through torchrt.checkpoint: pieces with offsets, resharded restore.

Real gloo process groups of spawned processes on CPU, real ``fully_shard``
models; the expected values are the full tensors (``DTensor.full_tensor``)
written by the saving job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_tensor

from torchrt.checkpoint import CheckpointManager, NoValidCheckpointError, SaveStatus, StateMismatchError
from torchrt.checkpoint.dcp import TorchrtStorageReader
from torchrt.checkpoint.manifest import read_manifest

from tests.helpers import init_gloo, spawn_ranks

# one worker runs this module, so its module-scoped `saved` is built once (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("checkpoint_fsdp")


class AppState:
    """Model and optimizer as DCP's docs recommend for FSDP2: FQN-keyed, sharded state dicts."""

    def __init__(self, model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
        self.model, self.optim = model, optim

    def state_dict(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, sd: dict) -> None:
        set_state_dict(self.model, self.optim, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def build(seed: int, world: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(seed)
    # 7 and 3 rows: uneven pieces at 2 ranks
    model = torch.nn.Sequential(torch.nn.Linear(16, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    table = torch.arange(12.0).reshape(3, 4) * (seed + 1)
    state = {"app": AppState(model, optim), "extra": {"table": distribute_tensor(table, mesh, [Replicate()])},
             "progress": {"step": 0}}
    return model, optim, state


def train_step(model: torch.nn.Module, optim: torch.optim.Optimizer, step: int) -> None:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
    model(x).pow(2).mean().backward()
    optim.step()
    optim.zero_grad()


def full_view(state: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the state as a full, plain tensor, by FQN (collective for DTensors)."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, DTensor):
            out[prefix] = value.full_tensor().clone()
        elif isinstance(value, torch.Tensor):
            out[prefix] = value.clone()

    walk("app", state["app"].state_dict())
    walk("extra", state["extra"])
    return out


def _worker(rank: int, world: int, port: int, scenario: str, root: str, out: str) -> None:
    init_gloo(rank, world, port)
    try:
        globals()[f"_scenario_{scenario}"](rank, world, Path(root), Path(out))
    finally:
        dist.destroy_process_group()


def _scenario_save(rank: int, world: int, root: Path, out: Path) -> None:
    model, optim, state = build(0, world)
    ck = CheckpointManager(root, replicated=("progress",))
    for step in range(1, 4):
        train_step(model, optim, step)
    state["progress"]["step"] = 3
    expected = full_view(state)
    handle = ck.save(state, 3)
    train_step(model, optim, 4)  # training goes on while the pieces are written
    assert handle.wait(60) == SaveStatus.COMMITTED
    ck.close()
    with pytest.raises(StateMismatchError, match="Partial"):
        CheckpointManager(root / "partial").save(
            {"p": {"t": DTensor.from_local(torch.ones(2), init_device_mesh("cpu", (world,)), [Partial()])}}, 1)
    if rank == 0:
        torch.save(expected, out / "expected.pt")


def _scenario_restore(rank: int, world: int, root: Path, out: Path) -> None:
    model, optim, state = build(seed=42, world=world)  # other weights, no optimizer state yet
    ck = CheckpointManager(root, replicated=("progress",))
    result = ck.load_latest(state)
    assert result is not None and result.step == 3 and state["progress"]["step"] == 3
    got, expected = full_view(state), torch.load(out / "expected.pt")
    assert sorted(got) == sorted(expected), sorted(set(got) ^ set(expected))
    for fqn, tensor in expected.items():
        assert torch.equal(got[fqn], tensor), f"{fqn} differs after restore at {world} rank(s)"
    train_step(model, optim, 4)  # and the restored job trains on
    ck.close()
    (out / f"restored-{world}-{rank}.json").write_text(json.dumps({"saved_world_size": result.saved_world_size}))


def _scenario_corrupt(rank: int, world: int, root: Path, out: Path) -> None:
    model, optim, state = build(seed=42, world=world)
    before = full_view(state)
    ck = CheckpointManager(root, replicated=("progress",))
    with pytest.raises(NoValidCheckpointError):
        ck.load_latest(state)
    ck.close()
    after = full_view(state)
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a corrupt checkpoint was partly applied"


def spawn(scenario: str, world: int, root: Path, out: Path) -> None:
    spawn_ranks(_worker, world, scenario, str(root), str(out))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root, out = tmp_path_factory.mktemp("fsdp-ckpt"), tmp_path_factory.mktemp("fsdp-out")
    spawn("save", 2, root, out)
    return root, out


def test_each_rank_writes_only_its_pieces_with_their_offsets(saved):
    root, _ = saved
    m = read_manifest(next(root.glob("step_*")))
    pieces = m.chunk_index()
    weight = sorted((rank, s.chunk.offsets, s.shape) for rank, s in pieces["app.model.0.weight"])
    assert weight == [(0, (0, 0), (4, 16)), (1, (4, 0), (3, 16))]  # 7 rows: uneven pieces
    exp_avg = sorted((rank, s.chunk.offsets) for rank, s in pieces["app.optim.state.2.weight.exp_avg"])
    assert exp_avg == [(0, (0, 0)), (1, (2, 0))]
    # replicated over the mesh: written once, by the rank at coordinate 0
    assert [(rank, s.chunk.offsets, s.shape) for rank, s in pieces["extra.table"]] == [(0, (0, 0), (3, 4))]
    assert all(s.chunk.global_shape == (7, 16) for _, s in pieces["app.model.0.weight"])


@pytest.mark.parametrize("world", [2, 1, 3])
def test_fsdp2_state_restores_bit_exact_at_any_world_size(saved, world):
    root, out = saved
    spawn("restore", world, root, out)
    assert all(json.loads((out / f"restored-{world}-{r}.json").read_text())["saved_world_size"] == 2
               for r in range(world))


def test_a_corrupt_piece_is_found_before_anything_is_applied(saved, tmp_path):
    root, out = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(root, copy)
    data = next(copy.glob("step_*/rank1/data.0"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    spawn("corrupt", 2, copy, out)


def test_fsdp2_checkpoint_loads_into_a_plain_model_through_dcp(saved):
    """Pieces written by two FSDP2 ranks, read whole by one process with no process group."""
    root, out = saved
    torch.manual_seed(7)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    target = {"app": {"model": plain.state_dict()}, "extra": {"table": torch.zeros(3, 4)}}
    dcp.load(target, storage_reader=TorchrtStorageReader(root))
    expected = torch.load(out / "expected.pt")
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, expected[f"app.model.{name}"]), name
    assert torch.equal(target["extra"]["table"], expected["extra.table"])
