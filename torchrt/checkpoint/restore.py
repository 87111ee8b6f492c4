"""Finding, verifying and restoring the newest good checkpoint.

Design
------
Candidates are the committed steps (those with ``manifest.json``), newest
first; ``latest`` is only a hint for people and tools, since a crash between
the manifest's rename and ``latest``'s leaves it one behind.

For a candidate, each rank works out what *it* needs and reads only that:

* keys saved as **replicated** (``CheckpointManager(replicated=...)``): the
  tree from any rank's record (they are identical) and each tensor from the
  rank that wrote it, so they restore at any world size;
* **per-rank** keys (everything else): rank ``r``'s own tree and tensors. At a
  different world size there is no right answer in general (a per-rank
  sampler position cannot be split or merged), so ``per_rank_on_resize``
  decides: ``"error"`` (default) raises :class:`StateMismatchError`;
  ``"keep"`` leaves those keys as they are (e.g. freshly seeded RNGs) and says
  so in the ``checkpoint_restored`` event.

Reads go through :class:`~torchrt.checkpoint.reader.CheckpointReader`, which
verifies every file it touches. Nothing is applied to the
caller's state until every rank has verified its part: the ranks then agree
(one ``all_gather_object`` per candidate) and either all restore this step or
all skip it with a ``checkpoint_skipped`` event and try the previous one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from torchrt.checkpoint.commit import committed_steps
from torchrt.checkpoint.errors import CorruptCheckpointError, NoValidCheckpointError, StateMismatchError
from torchrt.checkpoint.group import CheckpointGroup
from torchrt.checkpoint.manifest import step_dir_name
from torchrt.checkpoint.reader import CheckpointReader
from torchrt.checkpoint.dcp import load_through_planner
from torchrt.checkpoint.state import ShardRef, apply, holds_dtensor, materialize, refs
from torchrt.checkpoint.throughput import mbytes_per_second
from torchrt.contract import EventType
from torchrt.telemetry import get_reporter
from torchrt.telemetry.steps import note_restored

logger = logging.getLogger(__name__)

__all__ = ["CheckpointRead", "PerRankOnResize", "RestoreResult", "load_checkpoint", "restore_latest"]

PerRankOnResize = Literal["error", "keep"]


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    step: int
    path: Path
    saved_world_size: int
    bytes_read: int
    read_s: float
    skipped: list[int]
    per_rank_skipped: list[str]


@dataclasses.dataclass
class CheckpointRead:
    """What one rank read and verified of a checkpoint, before anything is applied."""

    trees: dict[str, Any]  # materialised, by top-level key
    reader: CheckpointReader
    per_rank_skipped: list[str]
    planner_keys: list[str]  # keys holding DTensors: loaded through DCP's planner once all ranks verified


def load_checkpoint(step_dir: Path, keys: Collection[str], rank: int, world_size: int,
                    per_rank_on_resize: PerRankOnResize = "error", threads: int = 4,
                    dtensor_keys: Collection[str] = ()) -> CheckpointRead:
    """Read and verify what ``rank`` needs of ``keys``.

    Keys that hold DTensors, in the checkpoint or in the state (``dtensor_keys``), are
    resharded by DCP's planner later; here each rank verifies its share of every data file
    (file ``i`` by rank ``i mod world_size``), so that a corrupt file is found before anything
    is applied, by exactly one rank.
    """
    reader = CheckpointReader(step_dir, threads=threads)
    m = reader.manifest
    replicated = set(m.replicated_keys)
    tree0 = reader.tree(0)
    planner_keys = [k for k in keys if k in tree0 and (k in dtensor_keys or refs(tree0[k], ShardRef))]
    keys = [k for k in keys if k not in planner_keys]
    per_rank = [k for k in keys if k not in replicated]
    source: int | None = rank if m.world_size == world_size else None
    per_rank_skipped: list[str] = []
    if per_rank and source is None:
        if per_rank_on_resize == "error":
            raise StateMismatchError(
                f"{step_dir}: saved at world size {m.world_size}, restoring at {world_size}; the per-rank "
                f"key(s) {per_rank} cannot be mapped to other ranks. Save them as replicated "
                "(CheckpointManager(replicated=...)) if they are the same on every rank, or pass "
                "per_rank_on_resize='keep' to leave them as they are")
        per_rank_skipped = per_rank
    trees: dict[str, Any] = {k: tree0[k] for k in keys if k in replicated and k in tree0}
    if per_rank and source is not None:
        own = reader.tree(source)
        trees.update({k: own[k] for k in per_rank if k in own})
    owners = m.replicated_index()
    requests: dict[int, set[str]] = {}
    for key, tree in trees.items():
        for fqn in refs(tree):
            if key in replicated:
                if fqn not in owners:
                    raise CorruptCheckpointError(step_dir, f"no rank wrote replicated tensor {fqn!r}")
                requests.setdefault(owners[fqn][0], set()).add(fqn)
            else:
                requests.setdefault(source, set()).add(fqn)  # type: ignore[arg-type]
    by_rank = reader.read_tensors(requests)
    loaded: dict[str, Any] = {}
    for key, tree in trees.items():
        if key in replicated:
            tensors = {fqn: by_rank[(owners[fqn][0], fqn)] for fqn in refs(tree)}
        else:
            tensors = {fqn: by_rank[(source, fqn)] for fqn in refs(tree)}  # type: ignore[index]
        loaded[key] = materialize(tree, tensors)
    if planner_keys:
        reader.verify_files(m.data_files()[rank::world_size])
    return CheckpointRead(loaded, reader, per_rank_skipped, planner_keys)


def restore_latest(root: Path, state: dict[str, Any], group: CheckpointGroup, *, strict: bool = True,
                   per_rank_on_resize: PerRankOnResize = "error", threads: int = 4) -> RestoreResult | None:
    """Restore the newest committed checkpoint every rank can verify (collective over ``group``)."""
    reporter = get_reporter()
    mine = [s for s, _ in reversed(committed_steps(root))]
    dtensor_keys = {k for k, v in state.items() if holds_dtensor(v)}
    candidates = group.all_gather_object(mine)[0]  # rank 0's view decides the order
    if not candidates:
        return None
    skipped: list[int] = []
    for step in candidates:
        step_dir = root / step_dir_name(step)
        started = time.perf_counter()
        verdict: str | None = None
        read: CheckpointRead | None = None
        try:
            read = load_checkpoint(step_dir, list(state), group.rank, group.world_size, per_rank_on_resize,
                                   threads, dtensor_keys)
        except CorruptCheckpointError as e:
            verdict = str(e)
        except StateMismatchError:
            raise  # decided by the manifest and the state alone: the same on every rank
        except Exception as e:  # noqa: BLE001 - any other failure to read is this rank's verdict, so no
            verdict = f"{step_dir}: unreadable: {type(e).__name__}: {e}"  # rank waits alone below
        verdicts = group.all_gather_object(verdict)
        bad = {r: v for r, v in enumerate(verdicts) if v is not None}
        if not bad:
            assert read is not None
            reader, per_rank_skipped = read.reader, read.per_rank_skipped
            apply(state, read.trees, strict=strict, leave=per_rank_skipped + read.planner_keys)
            if read.planner_keys:
                load_through_planner(step_dir, {k: state[k] for k in read.planner_keys}, group.rank)
            read_s = time.perf_counter() - started
            result = RestoreResult(step, step_dir, reader.manifest.world_size, reader.bytes_read, read_s,
                                   skipped, per_rank_skipped)
            note_restored(step)  # torchrt.step numbers go on from here
            reporter.emit(EventType.CHECKPOINT_RESTORED, step=step, rank=group.rank, world_size=group.world_size,
                          saved_world_size=reader.manifest.world_size, bytes=reader.bytes_read,
                          read_s=round(read_s, 4), mb_s=mbytes_per_second(reader.bytes_read, read_s),
                          skipped=skipped, per_rank_skipped=per_rank_skipped, path=str(step_dir))
            logger.info("checkpoint: restored step %d from %s (%.1f MB in %.2f s)", step, step_dir,
                        reader.bytes_read / 1e6, read_s)
            return result
        reason = "corrupt" if group.rank in bad else "corrupt_on_other_rank"
        detail = bad.get(group.rank) or "; ".join(f"rank {r}: {v}" for r, v in sorted(bad.items()))
        logger.warning("checkpoint: skipping step %d: %s", step, detail)
        reporter.emit(EventType.CHECKPOINT_SKIPPED, step=step, rank=group.rank, world_size=group.world_size,
                      reason=reason, detail=detail, path=str(step_dir))
        skipped.append(step)
    raise NoValidCheckpointError(f"{root}: none of the committed checkpoints {candidates} could be restored; "
                                 "see the checkpoint_skipped events")
