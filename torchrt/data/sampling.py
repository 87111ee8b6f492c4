"""The global order of an epoch and each rank's share of it.

Design
------
One permutation per epoch, a pure function of ``(seed, epoch)`` (``torch.randperm``
on a CPU ``torch.Generator`` seeded with a 64-bit mix of the two, so ``seed=1,
epoch=0`` and ``seed=0, epoch=1`` do not collide as ``seed + epoch`` would).
Every rank computes the same permutation; no communication is needed.

The job's progress through an epoch is one number, the **global position**: how
many slots of the permutation the whole job has consumed. A global step takes
the next ``world_size * batch_size`` slots starting at the position and deals
them to the ranks *strided*: rank ``r`` gets slots ``position + r + k *
world_size`` for ``k < batch_size``. After step ``s`` every rank is at the same
position, so a state saved by any rank at any step is the job's state, and a job
resumed at another world size simply deals the rest of the permutation from that
position with its own ``world_size``: over the epoch every sample is consumed
exactly once, whatever the world sizes before and after.

The uneven tail
---------------
Every rank computes the same number of steps from ``(size, position,
world_size, batch_size, policy)``, so no rank waits in a collective that another
rank never reaches. Two policies:

``drop_tail`` (default)
    Only full global steps: the last ``< world_size * batch_size`` slots of the
    epoch are not served (they differ per epoch since the permutation does).
    All batches have ``batch_size`` samples.
``pad``
    One more step serves the rest; slots past the end are *padding*: their
    ``mask`` is ``False`` and their index is ``-1``. Nothing is repeated
    silently; the strided deal spreads the real samples, so two ranks' real
    counts differ by at most one.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Literal, get_args

import numpy as np
import torch

from torchrt.data.errors import DataConfigError, IndexOutOfRangeError

__all__ = ["TAIL_POLICIES", "EpochPlan", "GlobalOrder", "RankStep", "TailPolicy", "epoch_seed"]

TailPolicy = Literal["drop_tail", "pad"]
TAIL_POLICIES: tuple[str, ...] = get_args(TailPolicy)

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of ``epoch``'s permutation: a 63-bit mix of ``seed`` and ``epoch``."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) >> 1


class GlobalOrder:
    """The per-epoch permutation of ``range(size)`` (identity when ``shuffle`` is false).

    Permutations are cached (the last ``cache`` epochs) and returned read-only.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, cache: int = 2) -> None:
        if size < 0:
            raise DataConfigError(f"dataset size must be >= 0, got {size}")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_size = max(1, cache)

    def permutation(self, epoch: int) -> np.ndarray:
        """The int64 order of ``epoch``: ``permutation(e)[p]`` is the sample at global position ``p``."""
        if epoch < 0:
            raise DataConfigError(f"epoch must be >= 0, got {epoch}")
        perm = self._cache.get(epoch)
        if perm is None:
            if self.shuffle:
                gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
                perm = torch.randperm(self.size, generator=gen, dtype=torch.int64).numpy()
            else:
                perm = np.arange(self.size, dtype=np.int64)
            perm.setflags(write=False)
            self._cache[epoch] = perm
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(epoch)
        return perm


@dataclasses.dataclass(frozen=True)
class RankStep:
    """One rank's share of one global step.

    ``indices`` are sample indices (``-1`` in padding slots), ``read`` the
    indices to actually read (padding slots repeat the step's first real sample
    so shapes are known; the pipeline zeroes them), ``mask`` is true for real
    samples.
    """

    epoch: int
    step: int
    position: int  # the global position at the start of this step
    indices: np.ndarray
    read: np.ndarray
    mask: np.ndarray

    @property
    def real(self) -> int:
        return int(self.mask.sum())


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """How the rest of an epoch, from global position ``start``, is dealt to ``world_size`` ranks."""

    size: int
    world_size: int
    batch_size: int
    tail: TailPolicy = "drop_tail"
    start: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise DataConfigError(f"world_size must be >= 1, got {self.world_size}")
        if self.batch_size < 1:
            raise DataConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tail not in TAIL_POLICIES:
            raise DataConfigError(f"tail policy must be one of {TAIL_POLICIES}, got {self.tail!r}")
        if not 0 <= self.start <= self.size:
            raise DataConfigError(f"global position {self.start} is outside [0, {self.size}]")

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    @property
    def steps(self) -> int:
        """Steps every rank takes from ``start`` to the end of the epoch."""
        remaining = self.size - self.start
        if self.tail == "pad":
            return -(-remaining // self.global_batch)
        return remaining // self.global_batch

    @property
    def end(self) -> int:
        """The global position after the last step (``< size`` only under ``drop_tail``)."""
        return self.position_after(self.steps - 1) if self.steps else self.start

    def position_after(self, step: int) -> int:
        """Global position once steps ``0..step`` of this plan are consumed."""
        return min(self.start + (step + 1) * self.global_batch, self.size)

    def slots(self, step: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Global positions (possibly ``>= size``: padding) of ``rank``'s slots at ``step``, and the mask."""
        self._check(step, rank)
        base = self.start + step * self.global_batch
        positions = base + rank + self.world_size * np.arange(self.batch_size, dtype=np.int64)
        return positions, positions < self.size

    def rank_step(self, order: np.ndarray, epoch: int, step: int, rank: int) -> RankStep:
        """``rank``'s share of ``step``, given the epoch's permutation ``order``."""
        positions, mask = self.slots(step, rank)
        indices = np.full(self.batch_size, -1, dtype=np.int64)
        indices[mask] = order[positions[mask]]
        read = indices.copy()
        read[~mask] = order[self.start + step * self.global_batch]  # always a real slot
        return RankStep(epoch=epoch, step=step, position=self.start + step * self.global_batch,
                        indices=indices, read=read, mask=mask)

    def rank_samples(self, rank: int) -> int:
        """Real samples ``rank`` receives over the plan."""
        if not 0 <= rank < self.world_size:
            raise IndexOutOfRangeError(f"rank {rank} is outside [0, {self.world_size})", index=rank)
        served = self.end - self.start
        full, extra = divmod(served, self.world_size)
        return full + (1 if rank < extra else 0)

    def describe(self, rank: int) -> dict[str, object]:
        """JSON-able description of which part of the epoch ``rank`` reads (for the registry)."""
        return {
            "scheme": "strided",
            "rule": "rank r reads global positions p + r + k*world_size, k < batch_size, of each step "
                    "starting at position p",
            "rank": rank, "world_size": self.world_size, "batch_size": self.batch_size,
            "start_position": self.start, "end_position": self.end, "steps": self.steps,
            "samples": self.rank_samples(rank), "dropped": self.size - self.end, "tail": self.tail,
        }

    def _check(self, step: int, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise IndexOutOfRangeError(f"rank {rank} is outside [0, {self.world_size})", index=rank)
        if not 0 <= step < self.steps:
            raise IndexOutOfRangeError(f"step {step} is outside [0, {self.steps}) of this epoch plan",
                                       index=step)
