"""The global order and each rank's share: exactly once, determinism, uneven tails (no processes)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from torchrt.data.errors import DataConfigError, IndexOutOfRangeError
from torchrt.data.sampling import EpochPlan, GlobalOrder, epoch_seed


def deal(size: int, world: int, batch: int, tail: str, start: int = 0, epoch: int = 0, seed: int = 0,
         order: GlobalOrder | None = None) -> tuple[dict[int, list[np.ndarray]], EpochPlan]:
    order = order or GlobalOrder(size, seed=seed)
    plan = EpochPlan(size, world, batch, tail, start)  # type: ignore[arg-type]
    perm = order.permutation(epoch)
    per_rank = {r: [plan.rank_step(perm, epoch, s, r) for s in range(plan.steps)] for r in range(world)}
    return per_rank, plan


@pytest.mark.parametrize("size,world,batch", [(103, 4, 5), (10, 3, 4), (7, 8, 1), (1000, 3, 7), (5, 2, 16)])
def test_pad_serves_every_sample_exactly_once(size, world, batch):
    per_rank, plan = deal(size, world, batch, "pad")
    seen = collections.Counter()
    for r, steps in per_rank.items():
        assert len(steps) == plan.steps, "every rank takes the same number of steps"
        for st in steps:
            assert len(st.indices) == batch
            assert (st.indices[~st.mask] == -1).all()
            seen.update(st.indices[st.mask].tolist())
        assert sum(st.real for st in steps) == plan.rank_samples(r)
    assert sorted(seen) == list(range(size)) and set(seen.values()) == {1}
    counts = [plan.rank_samples(r) for r in range(world)]
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("size,world,batch", [(103, 4, 5), (10, 3, 4), (1000, 3, 7), (64, 4, 16)])
def test_drop_tail_serves_full_batches_at_most_once(size, world, batch):
    per_rank, plan = deal(size, world, batch, "drop_tail")
    seen = collections.Counter()
    for steps in per_rank.values():
        assert len(steps) == plan.steps == size // (world * batch)
        for st in steps:
            assert st.mask.all() and st.real == batch
            seen.update(st.indices.tolist())
    assert set(seen.values()) <= {1}
    assert len(seen) == plan.steps * world * batch == plan.end
    assert plan.describe(0)["dropped"] == size - len(seen)


def test_drop_tail_with_fewer_samples_than_a_global_step_has_no_steps():
    plan = EpochPlan(10, 4, 4, "drop_tail")
    assert plan.steps == 0 and plan.end == 0 and plan.rank_samples(3) == 0


def test_same_seed_same_order_new_epoch_new_order():
    a, b = GlobalOrder(500, seed=7), GlobalOrder(500, seed=7)
    assert np.array_equal(a.permutation(0), b.permutation(0))
    assert np.array_equal(a.permutation(3), b.permutation(3))
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    assert not np.array_equal(a.permutation(0), GlobalOrder(500, seed=8).permutation(0))
    assert sorted(a.permutation(1).tolist()) == list(range(500))
    assert np.array_equal(GlobalOrder(50, shuffle=False).permutation(4), np.arange(50))
    assert epoch_seed(1, 0) != epoch_seed(0, 1)


def test_permutation_is_read_only_and_cached():
    order = GlobalOrder(100, seed=1, cache=2)
    p0 = order.permutation(0)
    with pytest.raises(ValueError):
        p0[0] = 5
    assert order.permutation(0) is p0


@pytest.mark.parametrize("tail", ["pad", "drop_tail"])
@pytest.mark.parametrize("before,after", [(2, 2), (2, 3), (4, 2), (2, 4), (3, 1)])
def test_resume_at_another_world_size_continues_exactly(tail, before, after):
    size, batch, seed = 997, 8, 3
    order = GlobalOrder(size, seed=seed)
    first = EpochPlan(size, before, batch, tail)  # type: ignore[arg-type]
    stop = first.steps // 2
    perm = order.permutation(0)
    seen = collections.Counter()
    for s in range(stop):
        for r in range(before):
            st = first.rank_step(perm, 0, s, r)
            seen.update(st.indices[st.mask].tolist())
    position = first.position_after(stop - 1)
    assert len(seen) == position
    per_rank, second = deal(size, after, batch, tail, start=position, order=order)
    for steps in per_rank.values():
        for st in steps:
            seen.update(st.indices[st.mask].tolist())
    assert set(seen.values()) == {1}
    if tail == "pad":
        assert len(seen) == size
    else:
        assert len(seen) == second.end and size - second.end < after * batch


def test_bad_plans_are_typed_errors():
    with pytest.raises(DataConfigError, match="batch_size"):
        EpochPlan(10, 2, 0)
    with pytest.raises(DataConfigError, match="tail policy"):
        EpochPlan(10, 2, 2, "repeat")  # type: ignore[arg-type]
    with pytest.raises(DataConfigError, match="position 11"):
        EpochPlan(10, 2, 2, start=11)
    with pytest.raises(IndexOutOfRangeError, match="rank 2"):
        EpochPlan(10, 2, 2).slots(0, 2)
    with pytest.raises(IndexOutOfRangeError, match="step 2"):
        EpochPlan(10, 2, 2, "drop_tail").slots(2, 0)
