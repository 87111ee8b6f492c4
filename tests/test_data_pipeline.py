"""ShardedPipeline in one process: ranks simulated by several pipelines; state, tails, errors, workers."""

from __future__ import annotations

import collections
import threading

import pytest
import torch
from torch.distributed.checkpoint.stateful import Stateful

from torchrt.data.errors import DataConfigError, DataStateMismatchError, SampleReadError
from torchrt.data.pipeline import ShardedPipeline
from torchrt.data.sources import ArraySource, MapSource, SyntheticSource


def arrays(n: int, name: str = "toy") -> ArraySource:
    return ArraySource({"input": torch.arange(n, dtype=torch.float32).reshape(n, 1).repeat(1, 3),
                        "target": torch.arange(n) % 7}, name=name)


def pipes(source, world: int, **kw) -> list[ShardedPipeline]:
    kw.setdefault("workers", 0)
    kw.setdefault("preview_interval", None)
    return [ShardedPipeline(source, rank=r, world_size=world, **kw) for r in range(world)]


def run_epoch(ps: list[ShardedPipeline], limit: int | None = None) -> tuple[collections.Counter, list[int]]:
    """Step all ranks in lockstep (like a training loop); returns sample counts and per-rank batch counts."""
    seen: collections.Counter = collections.Counter()
    its = [iter(p) for p in ps]
    steps = [0] * len(ps)
    while limit is None or steps[0] < limit:
        batches = [next(it, None) for it in its]
        if all(b is None for b in batches):
            break
        assert all(b is not None for b in batches), "ranks disagree on the number of steps"
        for r, b in enumerate(batches):
            assert len(b["index"]) == ps[r].batch_size
            assert torch.equal(b["index"] >= 0, b["mask"])
            seen.update(b["index"][b["mask"]].tolist())
            steps[r] += 1
    return seen, steps


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("size,world,batch", [(101, 3, 8), (50, 4, 3)])
def test_pad_every_sample_exactly_once(size, world, batch, workers):
    ps = pipes(arrays(size), world, batch_size=batch, tail="pad", workers=workers)
    seen, steps = run_epoch(ps)
    assert sorted(seen) == list(range(size)) and set(seen.values()) == {1}
    assert len(set(steps)) == 1 and all(p.epoch == 1 and p.position == 0 for p in ps)


def test_drop_tail_full_batches_never_twice():
    ps = pipes(arrays(101), 3, batch_size=8, tail="drop_tail")
    seen, steps = run_epoch(ps)
    assert steps == [4, 4, 4] and len(seen) == 96 and set(seen.values()) == {1}


def test_padding_rows_are_zeroed_and_ignored_by_cross_entropy():
    (p,) = pipes(arrays(5), 1, batch_size=4, tail="pad")
    last = list(p)[-1]
    assert last["mask"].tolist() == [True, False, False, False]
    assert last["index"].tolist()[1:] == [-1, -1, -1]
    assert (last["input"][1:] == 0).all() and last["target"][1:].tolist() == [-100] * 3
    logits = torch.randn(4, 7)
    assert torch.isfinite(torch.nn.functional.cross_entropy(logits, last["target"]))


def test_same_seed_same_order_new_epoch_new_order():
    def order(seed: int, epochs: int) -> list[list[int]]:
        (p,) = pipes(arrays(40), 1, batch_size=5, seed=seed)
        return [[i for b in p for i in b["index"].tolist()] for _ in range(epochs)]

    a, b = order(1, 2), order(1, 2)
    assert a == b and a[0] != a[1] and sorted(a[0]) == sorted(a[1]) == list(range(40))
    assert order(2, 1)[0] != a[0]
    (p,) = pipes(arrays(12), 1, batch_size=4, shuffle=False)
    assert [i for b in p for i in b["index"].tolist()] == list(range(12))


def test_state_is_the_same_on_every_rank_and_counts_delivered_batches():
    ps = pipes(arrays(90), 3, batch_size=4, workers=2, prefetch=3)
    its = [iter(p) for p in ps]
    for _ in range(2):
        for it in its:
            next(it)
    states = [p.state_dict() for p in ps]
    assert all(s == {**states[0], "world_size": 3} for s in states)
    assert states[0]["position"] == 24 and states[0]["epoch"] == 0  # prefetched batches do not count
    for p in ps:
        p.close()


@pytest.mark.parametrize("before,after,tail", [(2, 3, "pad"), (4, 2, "drop_tail"), (2, 4, "pad"), (3, 3, "pad")])
def test_resume_in_process_at_another_world_size(before, after, tail):
    source = arrays(203)
    first = pipes(source, before, batch_size=5, tail=tail, seed=9)
    seen, _ = run_epoch(first, limit=len(first[0]) // 2)
    state = first[0].state_dict()
    second = pipes(source, after, batch_size=5, tail=tail, seed=9)
    for p in second:
        p.load_state_dict(state)
    rest, _ = run_epoch(second)
    seen.update(rest)
    assert set(seen.values()) == {1}
    if tail == "pad":
        assert len(seen) == 203
    else:
        assert 203 - len(seen) < after * 5


def test_breaking_out_and_iterating_again_continues_without_repeats():
    (p,) = pipes(arrays(30), 1, batch_size=4, workers=2, tail="pad")
    got = []
    for i, b in enumerate(p):
        got += b["index"].tolist()
        if i == 2:
            break
    assert p.position == 12
    got += [i for b in p for i in b["index"][b["mask"]].tolist()]
    assert sorted(got) == list(range(30)) and p.epoch == 1


def test_set_epoch_restarts_other_epochs_but_keeps_a_resumed_position():
    (p,) = pipes(arrays(30), 1, batch_size=4)
    p.load_state_dict({**p.state_dict(), "epoch": 2, "position": 8})
    p.set_epoch(2)
    assert (p.epoch, p.position, len(p)) == (2, 8, 5)
    p.set_epoch(3)
    assert (p.epoch, p.position, len(p)) == (3, 0, 7)


def test_states_for_another_order_are_refused():
    (p,) = pipes(arrays(30, name="a"), 1, batch_size=4, seed=1)
    good = p.state_dict()
    for bad, field in [({"seed": 2}, "seed"), ({"size": 31}, "size"), ({"dataset": "b"}, "dataset"),
                       ({"shuffle": False}, "shuffle"), ({"position": 31}, "position"),
                       ({"format": "x"}, "format")]:
        with pytest.raises(DataStateMismatchError, match=field if field != "format" else "not a") as info:
            p.load_state_dict({**good, **bad})
        assert info.value.dataset == "a"


def test_bad_arguments_are_config_errors():
    with pytest.raises(DataConfigError, match="rank 3 is outside") as info:
        ShardedPipeline(arrays(5), batch_size=2, rank=3, world_size=2)
    assert info.value.dataset == "toy"
    with pytest.raises(DataConfigError, match="worker_mode"):
        ShardedPipeline(arrays(5), batch_size=2, worker_mode="fibers")  # type: ignore[arg-type]


class Flaky(torch.utils.data.Dataset):
    path = "/data/flaky.bin"

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int):
        if i == 13:
            raise OSError("disk said no")
        return torch.full((2,), float(i)), i


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_worker_errors_reach_the_caller_typed_with_dataset_file_index(mode):
    p = ShardedPipeline(MapSource(Flaky(), name="flaky"), batch_size=4, workers=1, worker_mode=mode,
                        shuffle=False, preview_interval=None)
    with pytest.raises(SampleReadError) as info:
        for _ in p:
            pass
    e = info.value
    assert (e.dataset, e.file, e.index) == ("flaky", "/data/flaky.bin", 13)
    assert "OSError: disk said no" in str(e)
    p.close()


def test_process_workers_and_transform():
    def scale(batch):  # runs in the workers
        batch["input"] = batch["input"].float() / 255
        return batch

    p = ShardedPipeline(SyntheticSource(64, shape=(3, 4, 4), num_classes=5), batch_size=16, workers=2,
                        worker_mode="processes", transform=scale, preview_interval=None)
    batches = list(p)
    assert len(batches) == 4 and batches[0]["input"].dtype == torch.float32
    assert float(batches[0]["input"].max()) <= 1.0
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(64))


def test_is_stateful_for_distributed_checkpoint():
    (p,) = pipes(arrays(8), 1, batch_size=2)
    assert isinstance(p, Stateful)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_batches_are_pinned_when_cuda_is_available(mode):
    p = ShardedPipeline(arrays(64), batch_size=16, workers=2, worker_mode=mode, tail="pad", preview_interval=None)
    assert p.pin_memory
    batches = list(p)
    assert all(b["input"].is_pinned() and b["index"].is_pinned() and b["mask"].is_pinned() for b in batches)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(64))
    on_gpu = batches[0]["input"].to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu(), batches[0]["input"])
    off = ShardedPipeline(arrays(8), batch_size=4, workers=0, pin_memory=False, preview_interval=None)
    assert not next(iter(off))["input"].is_pinned()


def test_an_abandoned_or_broken_iteration_stops_its_threads_at_once():
    before = set(threading.enumerate())

    def started() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t not in before and t.is_alive()}

    def abandon() -> None:
        p = ShardedPipeline(arrays(100), batch_size=4, workers=2, preview_interval=None)
        it = iter(p)
        next(it)
        assert started(), "the iteration runs worker threads"

    for _ in range(3):
        abandon()
    assert not started()
    p = ShardedPipeline(arrays(100), batch_size=4, workers=2, preview_interval=None)
    for i, _ in enumerate(p):
        if i == 1:
            break
    assert not started() and p.position == 8
