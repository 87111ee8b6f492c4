"""torchrt.checkpoint in one process: round trip, async safety, commit, corruption, retention, policies, DCP."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.optim.optimizer import register_optimizer_step_pre_hook

from torchrt.checkpoint import (CheckpointConfigError, CheckpointError, CheckpointFailedError, CheckpointManager,
                                CheckpointSpec, NoValidCheckpointError, RNGState, SaveStatus, StagingError,
                                StateMismatchError)
from torchrt.checkpoint._faults import FAULTS
from torchrt.checkpoint.dcp import TorchrtStorageReader
from torchrt.checkpoint.staging import HostBuffer
from torchrt.checkpoint.state import flatten, iter_leaves
from torchrt.checkpoint.throughput import mbytes_per_second
from torchrt.telemetry import Reporter, set_reporter

from tests.helpers import assert_same, snapshot


class DataState:
    """Stands in for a torchrt.data pipeline: a global position in a seeded permutation (Stateful)."""

    def __init__(self, size: int = 512, seed: int = 0) -> None:
        self.size, self.seed, self.epoch, self.position = size, seed, 0, 0

    def next_indices(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        perm = torch.randperm(self.size, generator=g)
        if self.position + n > self.size:
            self.epoch, self.position = self.epoch + 1, 0
            return self.next_indices(n)
        out = perm[self.position:self.position + n]
        self.position += n
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, sd: dict) -> None:
        self.seed, self.epoch, self.position = sd["seed"], sd["epoch"], sd["position"]


DATA = torch.randn(512, 32, generator=torch.Generator().manual_seed(1))


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 1024), torch.nn.BatchNorm1d(1024), torch.nn.ReLU(),
                                torch.nn.Dropout(0.1), torch.nn.Linear(1024, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = DataState(seed=seed)
    state = {"model": model, "optim": opt, "data": data, "rng": RNGState(), "progress": {"step": 0}}
    return model, opt, data, state


def train_step(model, opt, data) -> None:
    idx = data.next_indices(16)
    x = DATA[idx] + 0.01 * torch.randn(16, 32)  # torch's RNG matters here, as do dropout masks
    random.random(), np.random.rand()  # advance Python's and NumPy's too: their restore is checked
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.fixture
def events():
    got: list[dict] = []
    reporter = Reporter(got.extend, flush_interval=60)
    previous = set_reporter(reporter)

    def of(type: str | None = None) -> list[dict]:
        reporter.flush()
        return [e for e in got if type is None or e["type"] == type]

    yield of
    set_reporter(previous)
    reporter.close()


@pytest.fixture
def managers():
    made: list[CheckpointManager] = []

    def new(*args, **kw) -> CheckpointManager:
        m = CheckpointManager(*args, **kw)
        made.append(m)
        return m

    yield new
    for gate in (FAULTS.gate, FAULTS.stage_gate):  # a test that failed with a gate shut must not hang here
        if gate is not None:
            gate.set()
    FAULTS.gate = FAULTS.stage_gate = None
    FAULTS.on_busy = None
    for m in made:
        m._shutdown()


def test_async_save_while_training_then_bit_exact_restore(tmp_path, managers, events):
    model, opt, data, state = make(0)
    for _ in range(3):
        train_step(model, opt, data)
    ck = managers(tmp_path, keep=3)
    state["progress"]["step"] = 3
    expected_at_3 = snapshot(model, opt)
    handle = ck.save(state, 3)
    for _ in range(3):  # training goes on while the checkpoint is staged and written
        train_step(model, opt, data)
    assert handle.wait(30) is SaveStatus.COMMITTED
    final = snapshot(model, opt)
    draws = (torch.rand(3), random.random(), np.random.rand())

    model2, opt2, data2, state2 = make(seed=7)
    restored = managers(tmp_path).load_latest(state2)
    assert restored is not None and restored.step == 3 and restored.skipped == []
    assert state2["progress"] == {"step": 3}
    assert_same(snapshot(model2, opt2), expected_at_3)
    assert (data2.epoch, data2.position, data2.seed) == (0, 48, 0)
    for _ in range(3):
        train_step(model2, opt2, data2)
    assert_same(snapshot(model2, opt2), final)
    assert torch.equal(draws[0], torch.rand(3)) and draws[1:] == (random.random(), np.random.rand())

    saved, = events("checkpoint_saved")
    committed, = events("checkpoint_committed")
    restored_ev, = events("checkpoint_restored")
    assert saved["step"] == committed["step"] == restored_ev["step"] == 3
    for key in ("bytes", "stall_s", "stage_s", "write_s", "mb_s", "rank", "world_size", "path"):
        assert key in saved
    assert saved["bytes"] > 100_000 and committed["bytes"] == saved["bytes"]
    assert committed["ranks"][0]["rank"] == 0 and committed["total_s"] >= saved["write_s"]


def test_commit_layout_manifest_and_latest(tmp_path, managers):
    model, opt, data, state = make()
    train_step(model, opt, data)
    ck = managers(tmp_path, writer_threads=3)
    assert ck.save(state, 10).wait(30) is SaveStatus.COMMITTED
    step_dir = tmp_path / "step_0000000010"
    assert (tmp_path / "latest").read_text().strip() == step_dir.name
    manifest = json.loads((step_dir / "manifest.json").read_text())
    assert manifest["format"] == "torchrt.checkpoint" and manifest["step"] == 10
    on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
    assert on_disk == {f["path"] for f in manifest["files"]} | {"manifest.json", "rank0.done"}
    for f in manifest["files"]:
        assert (step_dir / f["path"]).stat().st_size == f["size"]
    assert not list(tmp_path.rglob(".*tmp*"))


def test_staging_race_is_loud_and_never_committed(tmp_path, managers, events):
    model, opt, data, state = make()
    train_step(model, opt, data)
    ck = managers(tmp_path)
    assert ck.save(state, 1).wait(30) is SaveStatus.COMMITTED
    FAULTS.stage_gate = threading.Event()
    handle = ck.save(state, 2)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # in place, without waiting for staging: misuse
    FAULTS.stage_gate.set()
    with pytest.raises(StagingError, match="0.weight"):
        handle.wait_staged(30)
    assert handle.wait(30) is SaveStatus.FAILED
    failed, = events("checkpoint_failed")
    assert failed["step"] == 2 and failed["stage"] == "stage" and "modified in place" in failed["error"]
    assert not (tmp_path / "step_0000000002" / "manifest.json").exists()
    assert (tmp_path / "latest").read_text().strip() == "step_0000000001"


def test_optimizer_step_waits_for_staging(tmp_path, managers):
    model, opt, data, state = make()
    train_step(model, opt, data)
    entered = threading.Event()
    first = register_optimizer_step_pre_hook(lambda o, a, k: entered.set())  # runs before the manager's hook
    try:
        ck = managers(tmp_path)
        before = snapshot(model, opt)
        FAULTS.stage_gate = threading.Event()
        handle = ck.save(state, 1)
        stepper = threading.Thread(target=train_step, args=(model, opt, data))
        stepper.start()
        assert entered.wait(30)  # the step is now blocked in the manager's hook, not mutating
        FAULTS.stage_gate.set()
        stepper.join(30)
        assert handle.wait(30) is SaveStatus.COMMITTED
        handle.wait_staged()
    finally:
        first.remove()
    model2, opt2, data2, state2 = make(3)
    managers(tmp_path).load_latest(state2)
    assert_same(snapshot(model2, opt2), before)


def test_corrupt_and_truncated_shards_are_skipped(tmp_path, managers, events):
    model, opt, data, state = make()
    ck = managers(tmp_path, keep=5)
    expected = {}
    for step in (1, 2, 3):
        train_step(model, opt, data)
        expected[step] = snapshot(model, opt)
        assert ck.save(state, step).wait(30) is SaveStatus.COMMITTED
    shard3 = tmp_path / "step_0000000003" / "rank0" / "data.0"
    raw = bytearray(shard3.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard3.write_bytes(raw)
    shard2 = tmp_path / "step_0000000002" / "rank0" / "data.0"
    with open(shard2, "r+b") as f:
        f.truncate(shard2.stat().st_size - 10)

    model2, opt2, data2, state2 = make(5)
    result = managers(tmp_path).load_latest(state2)
    assert result is not None and result.step == 1 and result.skipped == [3, 2]
    assert_same(snapshot(model2, opt2), expected[1])
    skipped = events("checkpoint_skipped")
    assert [e["step"] for e in skipped] == [3, 2]
    assert "rank0/data.0" in skipped[0]["detail"] and "checksum" in skipped[0]["detail"]
    assert "rank0/data.0" in skipped[1]["detail"] and "bytes" in skipped[1]["detail"]

    (tmp_path / "step_0000000001" / "rank0" / "tree.pt").write_bytes(b"garbage")
    with pytest.raises(NoValidCheckpointError):
        managers(tmp_path).load_latest(make(6)[3])


def test_partial_checkpoint_is_invisible_and_previous_is_used(tmp_path, managers, events):
    model, opt, data, state = make()
    ck = managers(tmp_path)
    assert ck.save(state, 1).wait(30) is SaveStatus.COMMITTED
    expected = snapshot(model, opt)
    train_step(model, opt, data)
    FAULTS.gate = threading.Event()  # hold the writers: step 2 is in flight
    handle = ck.save(state, 2)
    handle.wait_staged(30)
    model2, opt2, _, state2 = make(9)
    assert managers(tmp_path).load_latest(state2).step == 1  # not the one being written
    assert_same(snapshot(model2, opt2), expected)
    assert events("checkpoint_skipped") == []
    FAULTS.gate.set()
    assert handle.wait(30) is SaveStatus.COMMITTED
    assert managers(tmp_path).load_latest(make(9)[3]).step == 2


def test_retention_keeps_last_k_and_only_deletes_after_a_newer_commit(tmp_path, managers, events):
    model, opt, data, state = make()
    (tmp_path / "step_0000000000").mkdir(parents=True)  # leftover of a killed attempt, older: removed
    (tmp_path / "step_0000000099").mkdir()  # uncommitted and newer: maybe in flight, kept
    ck = managers(tmp_path, keep=2)
    for step in range(1, 6):
        train_step(model, opt, data)
        assert ck.save(state, step).wait(30) is SaveStatus.COMMITTED
        committed = sorted(p.name for p in tmp_path.glob("step_*") if (p / "manifest.json").exists())
        assert committed == [f"step_{s:010d}" for s in range(max(1, step - 1), step + 1)]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_0000000004", "step_0000000005", "step_0000000099"]
    deleted = [e["deleted"] for e in events("checkpoint_committed")]
    assert deleted == [[0], [], [1], [2], [3]]


def test_when_busy_skip_and_queue_never_interleave(tmp_path, managers, events):
    model, opt, data, state = make()
    train_step(model, opt, data)
    skip = managers(tmp_path / "skip", when_busy="skip")
    FAULTS.gate = threading.Event()
    first = skip.save(state, 1)
    second = skip.save(state, 2)
    assert second.status is SaveStatus.SKIPPED and second.done()
    busy, = events("checkpoint_skipped")
    assert busy["step"] == 2 and busy["reason"] == "busy"
    FAULTS.gate.set()
    assert first.wait(30) is SaveStatus.COMMITTED

    queue = managers(tmp_path / "queue", when_busy="queue")
    FAULTS.gate = threading.Event()
    first = queue.save(state, 1)
    expected_1 = snapshot(model, opt)
    train_step(model, opt, data)  # waits for step 1's staging, not for its write
    expected_2 = snapshot(model, opt)
    FAULTS.on_busy = lambda step: FAULTS.gate.set()  # step 1 is still writing when step 2 is requested
    second = queue.save(state, 2)
    FAULTS.on_busy = None
    assert first.done() or first.wait(30) is SaveStatus.COMMITTED
    assert second.wait(30) is SaveStatus.COMMITTED and first.status is SaveStatus.COMMITTED
    saved = [e for e in events("checkpoint_saved") if str(tmp_path / "queue") in e["path"]]
    assert [e["step"] for e in saved] == [1, 2] and saved[1]["queued_s"] > 0
    for step, expected in ((1, expected_1), (2, expected_2)):
        m, o, _, st = make(4)
        sd = {"model": m.state_dict()}  # read that very step through DCP's API, which also checks the files
        dcp.load(sd, storage_reader=TorchrtStorageReader(tmp_path / "queue" / f"step_{step:010d}"))
        assert all(torch.equal(sd["model"][k], expected[f"m.{k}"]) for k in sd["model"])


def test_unwritable_dir_continue_and_stop(tmp_path, managers, events):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model, opt, data, state = make()
    go_on = managers(blocker / "ckpt", on_error="continue")
    handle = go_on.save(state, 1)
    assert handle.wait(30) is SaveStatus.FAILED
    failed, = events("checkpoint_failed")
    assert failed["stage"] == "write" and "Not a directory" in failed["error"] and str(blocker) in failed["error"]
    train_step(model, opt, data)
    assert go_on.save(state, 2).wait(30) is SaveStatus.FAILED  # still going

    stop = managers(blocker / "ckpt2", on_error="stop")
    assert stop.save(state, 1).wait(30) is SaveStatus.FAILED
    with pytest.raises(CheckpointFailedError, match="Not a directory"):
        stop.maybe_save(state, 2)
    with pytest.raises(CheckpointFailedError):
        stop.wait()


def test_sync_mode_maybe_save_and_step_checks(tmp_path, managers):
    model, opt, data, state = make()
    ck = managers(tmp_path, every_steps=2, async_save=False)
    assert ck.maybe_save(state, 1) is None
    handle = ck.maybe_save(state, 2)
    assert handle is not None and handle.status is SaveStatus.COMMITTED  # returned committed
    with pytest.raises(CheckpointError, match="increase"):
        ck.save(state, 2)
    timed = managers(tmp_path / "t", every_seconds=1e-9)
    assert timed.maybe_save(state, 1) is not None and timed.maybe_save(state, 2) is not None
    timed.wait(30)


def test_restore_checks_the_target_state(tmp_path, managers):
    model, opt, data, state = make()
    ck = managers(tmp_path)
    ck.save({"w": torch.zeros(3, 4), "progress": {"step": 1}}, 1).wait(30)
    with pytest.raises(StateMismatchError, match="shape"):
        managers(tmp_path).load_latest({"w": torch.zeros(4, 3)})
    with pytest.raises(StateMismatchError, match="no entry"):
        managers(tmp_path).load_latest({"w": torch.zeros(3, 4), "other": torch.zeros(1)})
    target = {"w": torch.ones(3, 4), "other": torch.ones(1)}
    managers(tmp_path).load_latest(target, strict=False)
    assert torch.equal(target["w"], torch.zeros(3, 4)) and torch.equal(target["other"], torch.ones(1))
    assert managers(tmp_path / "empty").load_latest(target) is None


def test_flatten_uses_dcp_names():
    model, opt, data, state = make()
    train_step(model, opt, data)
    state_dicts = {"model": model.state_dict(), "optim": opt.state_dict(), "data": data.state_dict(),
                   "progress": {"step": 1}}
    ours = flatten(state_dicts)
    theirs, _ = flatten_state_dict(state_dicts)
    names = set(ours.tensors)
    iter_leaves(ours.tree, lambda fqn, leaf: names.add(fqn))
    assert names == set(theirs)


def test_dcp_load_reads_a_torchrt_checkpoint(tmp_path, managers):
    model, opt, data, state = make()
    train_step(model, opt, data)
    state["progress"]["step"] = 1
    managers(tmp_path).save(state, 1).wait(30)
    expected = snapshot(model, opt)
    model2, opt2, data2, _ = make(8)
    train_step(model2, opt2, data2)  # DCP loads into existing optimizer state
    sd = {"model": model2.state_dict(), "optim": opt2.state_dict(), "data": data2, "progress": {"step": 0}}
    assert TorchrtStorageReader.validate_checkpoint_id(tmp_path)
    dcp.load(sd, storage_reader=TorchrtStorageReader(tmp_path))
    opt2.load_state_dict(sd["optim"])
    assert_same(snapshot(model2, opt2), expected)
    assert sd["progress"] == {"step": 1} and (data2.position, data2.seed) == (16, 0)
    assert not TorchrtStorageReader.validate_checkpoint_id(tmp_path / "nothing")


def test_spec_validation_and_from_spec(tmp_path):
    with pytest.raises(CheckpointConfigError, match="checkpoint.keep"):
        CheckpointSpec(dir=str(tmp_path), keep=0)
    with pytest.raises(CheckpointConfigError, match="checkpoint.when_busy"):
        CheckpointSpec(dir=str(tmp_path), when_busy="drop")  # type: ignore[arg-type]
    with pytest.raises(CheckpointConfigError, match="checkpoint.every_steps"):
        CheckpointSpec(dir=str(tmp_path), every_steps=True)  # type: ignore[arg-type]
    spec = CheckpointSpec(dir=str(tmp_path), every_steps=5, keep=1, writer_threads=2, on_error="stop",
                          when_busy="skip")
    ck = CheckpointManager.from_spec(spec, replicated=("model",))
    try:
        assert ck.spec == spec and ck.replicated == {"model"}
    finally:
        ck.close()


def _huge_page_kib(address: int) -> int:
    """AnonHugePages of the mapping of this process that contains ``address`` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_cpu_staging_buffer_is_private_and_backed_by_huge_pages():
    """O_DIRECT requests are built from physically contiguous segments: 4 KiB pages scattered by a
    fragmented memory made 6x the requests and 0.7x the throughput (benchmarks/RESULTS.md)."""
    buffer = HostBuffer()  # "auto" on a CPU build
    view = buffer.ensure(16 << 20)
    try:
        assert buffer.kind == "private" and view.data_ptr() % (2 << 20) == 0
        if "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
            assert _huge_page_kib(view.data_ptr()) >= 16 << 10
    finally:
        buffer.release()


def test_a_small_slow_save_reports_the_throughput_it_had_not_zero(tmp_path, managers, events):
    """A few kB written over a third of a second is ~0.01 MB/s: one decimal would have said 0.0."""
    state = {"weights": torch.ones(64), "progress": {"step": 1}}
    ck = managers(tmp_path)
    FAULTS.gate = threading.Event()  # the writers wait: the write takes at least as long as the gate is shut
    handle = ck.save(state, 1)
    handle.wait_staged(30)  # the write has started (its clock runs from before staging): now 0.35 s of it
    with pytest.raises(TimeoutError, match="checkpoint step 1 not finished after 0.35 s"):
        handle.wait(0.35)
    FAULTS.gate.set()
    assert handle.wait(30) is SaveStatus.COMMITTED
    saved, = events("checkpoint_saved")
    committed, = events("checkpoint_committed")
    restored = managers(tmp_path).load_latest({"weights": torch.zeros(64), "progress": {"step": 0}})
    restored_ev, = events("checkpoint_restored")
    assert restored.step == 1 and saved["write_s"] >= 0.35 and saved["bytes"] < 100_000
    for reported, seconds in ((saved, saved["write_s"]), (committed, committed["total_s"])):
        assert 0 < reported["mb_s"] == mbytes_per_second(reported["bytes"], seconds)
    assert restored_ev["mb_s"] > 0


def test_throughput_keeps_three_significant_figures():
    assert mbytes_per_second(2_130, 0.1) == 0.0213
    assert mbytes_per_second(123_456_789, 1.0) == 123.0
    assert mbytes_per_second(0, 1.0) == 0.0
    assert mbytes_per_second(5_000_000, 0.0) > 0  # a write too fast for the clock still reports a rate
