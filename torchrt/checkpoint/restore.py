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

:class:`CheckpointReader` reads each needed data file *sequentially and
completely* in parallel threads, straight into freshly allocated tensors
(bytes between needed tensors go to a scratch buffer), computing the file's
CRC-32 on the way; a size or checksum mismatch is a
:class:`CorruptCheckpointError` naming the file. Nothing is applied to the
caller's state until every rank has verified its part: the ranks then agree
(one ``all_gather_object`` per candidate) and either all restore this step or
all skip it with a ``checkpoint_skipped`` event and try the previous one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from torchrt.checkpoint.checksum import crc32
from torchrt.checkpoint.commit import committed_steps
from torchrt.checkpoint.errors import CorruptCheckpointError, NoValidCheckpointError, StateMismatchError
from torchrt.checkpoint.group import CheckpointGroup
from torchrt.checkpoint.layout import FileRange, Slot, dtype_from_name, pieces
from torchrt.checkpoint.manifest import FileEntry, Manifest, read_manifest, step_dir_name
from torchrt.checkpoint.state import apply, loads_tree, materialize, refs
from torchrt.telemetry import get_reporter

logger = logging.getLogger(__name__)

__all__ = ["CheckpointReader", "PerRankOnResize", "RestoreResult", "restore_latest"]

PerRankOnResize = Literal["error", "keep"]
_SCRATCH = 8 << 20


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    step: int
    path: Path
    saved_world_size: int
    bytes_read: int
    read_s: float
    skipped: list[int]
    per_rank_skipped: list[str]


def _read_exact(f: Any, view: memoryview, crc: int, name: str, step_dir: Path) -> int:
    while view:
        n = f.readinto(view)
        if not n:
            raise CorruptCheckpointError(step_dir, "truncated (shorter than its manifest size)", name)
        crc = crc32(view[:n], crc)
        view = view[n:]
    return crc


class CheckpointReader:
    """Verified reads from one committed checkpoint directory."""

    def __init__(self, step_dir: Path, manifest: Manifest | None = None, threads: int = 4) -> None:
        self.step_dir = Path(step_dir)
        self.manifest = manifest or read_manifest(self.step_dir)
        self.threads = threads
        self.bytes_read = 0
        self._files = self.manifest.files
        self._trees: dict[int, dict[str, Any]] = {}

    def _entry(self, path: str) -> FileEntry:
        try:
            return self._files[path]
        except KeyError:
            raise CorruptCheckpointError(self.step_dir, "not listed in the manifest", path) from None

    def _open(self, entry: FileEntry) -> Any:
        try:
            f = open(self.step_dir / entry.path, "rb", buffering=0)
        except OSError as e:
            raise CorruptCheckpointError(self.step_dir, f"cannot open: {e.strerror}", entry.path) from e
        size = os.fstat(f.fileno()).st_size
        if size != entry.size:
            f.close()
            raise CorruptCheckpointError(self.step_dir, f"has {size} bytes, the manifest says {entry.size}",
                                         entry.path)
        return f

    def read_file(self, path: str) -> bytes:
        """A whole (small) file, verified."""
        entry = self._entry(path)
        with self._open(entry) as f:
            data = bytearray(entry.size)
            crc = _read_exact(f, memoryview(data), 0, path, self.step_dir)
        self._verify(entry, crc)
        self.bytes_read += entry.size
        return bytes(data)

    def _verify(self, entry: FileEntry, crc: int) -> None:
        if crc != entry.crc32:
            raise CorruptCheckpointError(self.step_dir, f"checksum mismatch (crc32 {crc:08x}, the manifest "
                                         f"says {entry.crc32:08x})", entry.path)

    def tree(self, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s state tree (verified; read once)."""
        if rank not in self._trees:
            self._trees[rank] = loads_tree(self.read_file(self.manifest.ranks[rank].tree))
        return self._trees[rank]

    def read_tensors(self, requests: Mapping[int, Collection[str]]) -> dict[tuple[int, str], torch.Tensor]:
        """Tensors ``{rank: fqns}``, read from every file that holds one of them, each file verified."""
        out: dict[tuple[int, str], torch.Tensor] = {}
        jobs: dict[tuple[int, int], list[tuple[int, int, memoryview]]] = {}
        for rank, fqns in requests.items():
            record = self.manifest.ranks[rank]
            for fqn in fqns:
                slot = record.slots.get(fqn)
                if slot is None:
                    raise CorruptCheckpointError(self.step_dir, f"rank {rank}'s record has no tensor {fqn!r}")
                raw = torch.empty(slot.nbytes, dtype=torch.uint8)
                out[(rank, fqn)] = _typed(raw, slot)
                view = memoryview(raw.numpy()) if slot.nbytes else memoryview(b"")
                for fi, foff, length, soff in pieces(record.data_files, slot.offset, slot.nbytes):
                    jobs.setdefault((rank, fi), []).append((foff, length, view[soff:soff + length]))
        with concurrent.futures.ThreadPoolExecutor(max(1, min(self.threads, len(jobs) or 1))) as pool:
            futures = [pool.submit(self._read_ranges, self.manifest.ranks[r].data_files[fi], segs)
                       for (r, fi), segs in jobs.items()]
            self.bytes_read += sum(fut.result() for fut in futures)
        return out

    def _read_ranges(self, rng: FileRange, segments: list[tuple[int, int, memoryview]]) -> int:
        entry = self._entry(rng.name)
        scratch = memoryview(bytearray(min(_SCRATCH, max(entry.size, 1))))
        crc, pos = 0, 0
        with self._open(entry) as f:
            for off, length, dest in sorted(segments, key=lambda s: s[0]) + [(entry.size, 0, memoryview(b""))]:
                while pos < off:  # bytes nobody asked for: read them anyway, the checksum covers the file
                    n = min(len(scratch), off - pos)
                    crc = _read_exact(f, scratch[:n], crc, rng.name, self.step_dir)
                    pos += n
                crc = _read_exact(f, dest, crc, rng.name, self.step_dir)
                pos += length
        self._verify(entry, crc)
        return entry.size


def _typed(raw: torch.Tensor, slot: Slot) -> torch.Tensor:
    return raw.view(dtype_from_name(slot.dtype)).view(slot.shape)


def load_checkpoint(step_dir: Path, keys: Collection[str], rank: int, world_size: int,
                    per_rank_on_resize: PerRankOnResize = "error", threads: int = 4,
                    ) -> tuple[dict[str, Any], CheckpointReader, list[str]]:
    """Read and verify what ``rank`` needs of ``keys``; returns materialised trees by key."""
    reader = CheckpointReader(step_dir, threads=threads)
    m = reader.manifest
    replicated = set(m.replicated_keys)
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
    trees: dict[str, Any] = {}
    if any(k in replicated for k in keys):
        tree0 = reader.tree(0)
        trees.update({k: tree0[k] for k in keys if k in replicated and k in tree0})
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
    return loaded, reader, per_rank_skipped


def restore_latest(root: Path, state: dict[str, Any], group: CheckpointGroup, *, strict: bool = True,
                   per_rank_on_resize: PerRankOnResize = "error", threads: int = 4) -> RestoreResult | None:
    """Restore the newest committed checkpoint every rank can verify (collective over ``group``)."""
    reporter = get_reporter()
    mine = [s for s, _ in reversed(committed_steps(root))]
    candidates = group.all_gather_object(mine)[0]  # rank 0's view decides the order
    if not candidates:
        return None
    skipped: list[int] = []
    for step in candidates:
        step_dir = root / step_dir_name(step)
        started = time.perf_counter()
        verdict: str | None = None
        loaded: dict[str, Any] = {}
        reader: CheckpointReader | None = None
        per_rank_skipped: list[str] = []
        try:
            loaded, reader, per_rank_skipped = load_checkpoint(step_dir, list(state), group.rank,
                                                               group.world_size, per_rank_on_resize, threads)
        except CorruptCheckpointError as e:
            verdict = str(e)
        except StateMismatchError:
            raise  # decided by the manifest and the state alone: the same on every rank
        except Exception as e:  # noqa: BLE001 - any other failure to read is this rank's verdict, so no
            verdict = f"{step_dir}: unreadable: {type(e).__name__}: {e}"  # rank waits alone below
        verdicts = group.all_gather_object(verdict)
        bad = {r: v for r, v in enumerate(verdicts) if v is not None}
        if not bad:
            assert reader is not None
            apply(state, loaded, strict=strict, leave=per_rank_skipped)
            read_s = time.perf_counter() - started
            result = RestoreResult(step, step_dir, reader.manifest.world_size, reader.bytes_read, read_s,
                                   skipped, per_rank_skipped)
            reporter.emit("checkpoint_restored", step=step, rank=group.rank, world_size=group.world_size,
                          saved_world_size=reader.manifest.world_size, bytes=reader.bytes_read,
                          read_s=round(read_s, 4), mb_s=round(reader.bytes_read / max(read_s, 1e-9) / 1e6, 1),
                          skipped=skipped, per_rank_skipped=per_rank_skipped, path=str(step_dir))
            logger.info("checkpoint: restored step %d from %s (%.1f MB in %.2f s)", step, step_dir,
                        reader.bytes_read / 1e6, read_s)
            return result
        reason = "corrupt" if group.rank in bad else "corrupt_on_other_rank"
        detail = bad.get(group.rank) or "; ".join(f"rank {r}: {v}" for r, v in sorted(bad.items()))
        logger.warning("checkpoint: skipping step %d: %s", step, detail)
        reporter.emit("checkpoint_skipped", step=step, rank=group.rank, world_size=group.world_size,
                      reason=reason, detail=detail, path=str(step_dir))
        skipped.append(step)
    raise NoValidCheckpointError(f"{root}: none of the committed checkpoints {candidates} could be restored; "
                                 "see the checkpoint_skipped events")
