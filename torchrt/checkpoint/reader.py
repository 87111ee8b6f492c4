"""Verified reads from one committed checkpoint directory.

:class:`CheckpointReader` reads each needed data file *sequentially and
completely* in parallel threads, straight into freshly allocated tensors
(bytes between needed tensors go to a scratch buffer), computing the file's
CRC-32 on the way; a size or checksum mismatch is a
:class:`CorruptCheckpointError` naming the file. Restore
(:mod:`~torchrt.checkpoint.restore`) and the DCP storage reader
(:mod:`~torchrt.checkpoint.dcp`) both read through it.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from torchrt.checkpoint.checksum import crc32
from torchrt.checkpoint.errors import CorruptCheckpointError
from torchrt.checkpoint.layout import FileRange, Slot, dtype_from_name, pieces
from torchrt.checkpoint.manifest import FileEntry, Manifest, read_manifest
from torchrt.checkpoint.state import loads_tree

__all__ = ["CheckpointReader"]

_SCRATCH = 8 << 20


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
        self._read_files([(self.manifest.ranks[r].data_files[fi], segs) for (r, fi), segs in jobs.items()])
        return out

    def verify_files(self, files: Collection[FileRange]) -> None:
        """Read ``files`` whole and check their sizes and checksums."""
        self._read_files([(f, []) for f in files])

    def _read_files(self, jobs: list[tuple[FileRange, list[tuple[int, int, memoryview]]]]) -> None:
        """Read each file once, in parallel threads, filling its segments and verifying it."""
        with concurrent.futures.ThreadPoolExecutor(max(1, min(self.threads, len(jobs) or 1))) as pool:
            futures = [pool.submit(self._read_ranges, rng, segs) for rng, segs in jobs]
            self.bytes_read += sum(fut.result() for fut in futures)

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
