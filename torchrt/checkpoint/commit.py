"""The atomic commit protocol and retention.

Design
------
1. Every rank writes its files under ``step_<N>/rank<r>/`` and fsyncs them,
   then writes its record ``step_<N>/rank<r>.done`` atomically and reports
   the same record to rank 0 through the store
   (:class:`~torchrt.checkpoint.group.CheckpointGroup`).
2. Rank 0 waits for every rank's report. If one failed or is missing, the step
   is failed and nothing visible changes.
3. Rank 0 checks that every reported file exists with its size, then writes
   ``manifest.json`` (every file, size, CRC-32) by tmp + fsync + rename and
   fsyncs the step directory. **The rename is the commit point.**
4. Rank 0 then advances ``latest`` (tmp + fsync + rename) and applies
   retention: keep the newest ``keep`` committed steps; delete older committed
   ones (manifest first, so they turn invisible before they are dismantled)
   and uncommitted leftovers older than the new commit (failed or killed
   attempts). Uncommitted steps *newer* than the commit are never touched:
   they may be in flight.

A crash anywhere before step 3 leaves a directory without a manifest, which
readers ignore; a crash between 3 and 4 leaves ``latest`` one behind, which is
why readers trust manifests, not ``latest``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from torchrt.checkpoint.errors import CheckpointError
from torchrt.checkpoint.manifest import (DONE, LATEST, MANIFEST, RankRecord, build_manifest, parse_step,
                                         step_dir_name)
from torchrt.checkpoint.writer import fsync_dir, write_atomic

logger = logging.getLogger(__name__)

__all__ = ["CommitOutcome", "apply_retention", "commit", "committed_steps", "prepare_rank_dir",
           "remove_rank_files", "write_done"]


@dataclasses.dataclass(frozen=True)
class CommitOutcome:
    step: int
    path: Path
    bytes: int


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Every ``step_<N>`` directory under ``root``, ascending."""
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return []
    out = [(s, p) for p in entries if (s := parse_step(p.name)) is not None and p.is_dir()]
    return sorted(out)


def committed_steps(root: Path) -> list[tuple[int, Path]]:
    """Steps whose manifest exists (committed), ascending."""
    return [(s, p) for s, p in step_dirs(root) if (p / MANIFEST).is_file()]


def prepare_rank_dir(root: Path, step: int, rank: int) -> Path:
    """Create ``step_<N>/rank<r>/`` afresh (removing what a killed attempt left); returns the step dir.

    A step saved again although it is committed (the job restored an older
    checkpoint, say because this one was corrupt) is first made invisible.
    """
    step_dir = root / step_dir_name(step)
    rank_dir = step_dir / f"rank{rank}"
    if (step_dir / MANIFEST).exists():
        logger.warning("checkpoint: step %d is committed already; replacing it", step)
        (step_dir / MANIFEST).unlink(missing_ok=True)
    (step_dir / DONE.format(rank=rank)).unlink(missing_ok=True)
    if rank_dir.exists():
        shutil.rmtree(rank_dir)
    rank_dir.mkdir(parents=True)
    fsync_dir(step_dir)
    fsync_dir(root)
    return step_dir


def remove_rank_files(root: Path, step: int, rank: int) -> None:
    """Best effort: free the space a failed attempt used (it matters when the disk is full)."""
    step_dir = root / step_dir_name(step)
    if (step_dir / MANIFEST).exists():
        return
    shutil.rmtree(step_dir / f"rank{rank}", ignore_errors=True)
    try:
        (step_dir / DONE.format(rank=rank)).unlink(missing_ok=True)
        if not any(step_dir.iterdir()):
            step_dir.rmdir()
    except OSError:
        pass


def write_done(step_dir: Path, record: RankRecord) -> None:
    write_atomic(step_dir / DONE.format(rank=record.rank), json.dumps(record.to_json()).encode())


def commit(root: Path, step: int, records: Sequence[RankRecord], replicated_keys: Sequence[str]) -> CommitOutcome:
    """Rank 0: make ``step`` visible, steps 3 and 4 of the module docstring (retention is
    :func:`apply_retention`, run after the commit is announced); raises :class:`CheckpointError`."""
    step_dir = root / step_dir_name(step)
    manifest = build_manifest(step, records, replicated_keys)
    for f in manifest.files.values():
        try:
            size = (step_dir / f.path).stat().st_size
        except OSError as e:
            raise CheckpointError(f"step {step}: reported file {f.path} is missing: {e}") from e
        if size != f.size:
            raise CheckpointError(f"step {step}: {f.path} has {size} bytes, its rank reported {f.size}")
    write_atomic(step_dir / MANIFEST, json.dumps(manifest.to_json()).encode())
    write_atomic(root / LATEST, (step_dir.name + "\n").encode())
    return CommitOutcome(step, step_dir, manifest.bytes)


def apply_retention(root: Path, keep: int, newest: int) -> list[int]:
    """After committing ``newest``: keep the newest ``keep`` commits; returns the steps deleted."""
    committed = [s for s, _ in committed_steps(root)]
    kept = set(sorted(s for s in committed if s <= newest)[-keep:])
    deleted = []
    for s, p in step_dirs(root):
        if s >= newest or s in kept:
            continue
        started = time.perf_counter()
        try:
            (p / MANIFEST).unlink(missing_ok=True)  # invisible first
            fsync_dir(p)
            shutil.rmtree(p)
        except OSError as e:
            logger.warning("checkpoint retention: could not delete %s: %s", p, e)
            continue
        deleted.append(s)
        logger.info("checkpoint retention: deleted %s in %.3f s", p, time.perf_counter() - started)
    if deleted:
        fsync_dir(root)
    return deleted
