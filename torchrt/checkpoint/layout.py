"""Where each staged tensor lives: one flat byte stream per rank, cut into files.

Design
------
A rank's tensors are laid end to end, each at a 64-byte aligned offset, in one
*logical stream* of ``total`` bytes. The staging buffer holds exactly that
stream, so staging is one copy per tensor into a view of the buffer and writing
is a plain sequential write of buffer ranges: no serialisation at all.

The stream is cut into ``num_files`` files of (nearly) equal size at page
boundaries, *not* at tensor boundaries, so parallel writers are balanced even
when one tensor holds most of the bytes. A tensor may therefore span two
files; :meth:`Layout.pieces` maps any byte range of the stream to
``(file index, offset in file, length)`` pieces, which is all a reader needs.
Files smaller than ``MIN_FILE_BYTES`` are not worth a writer thread, so small
states use fewer files.

The layout is a pure function of the tensors' names, dtypes, shapes and the
file count; the manager caches it and reuses the staging buffer while the
signature does not change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch

__all__ = ["ALIGN", "MIN_FILE_BYTES", "Chunk", "FileRange", "Layout", "Slot", "dtype_from_name", "dtype_name", "plan_layout"]

ALIGN = 64
PAGE = 4096
MIN_FILE_BYTES = 4 << 20


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Where a rank's piece of a DTensor sits in the global tensor."""

    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Slot:
    """One tensor in the stream; ``chunk`` is set when it is a piece of a DTensor."""

    fqn: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    replicated: bool = False
    chunk: Chunk | None = None

    def to_json(self) -> list:
        row = [self.dtype, list(self.shape), self.offset, self.nbytes, self.replicated]
        if self.chunk is not None:
            row += [list(self.chunk.global_shape), list(self.chunk.offsets)]
        return row

    @classmethod
    def from_json(cls, fqn: str, row: Sequence) -> Slot:
        dtype, shape, offset, nbytes, replicated, *chunk = row
        return cls(fqn, str(dtype), _ints(shape), int(offset), int(nbytes), bool(replicated),
                   Chunk(_ints(chunk[0]), _ints(chunk[1])) if chunk else None)


def _ints(values: Sequence) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class FileRange:
    """A data file holding bytes ``[start, start + size)`` of the stream."""

    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclasses.dataclass(frozen=True)
class Layout:
    slots: tuple[Slot, ...]
    files: tuple[FileRange, ...]
    total: int

    def pieces(self, offset: int, nbytes: int) -> Iterator[tuple[int, int, int, int]]:
        """``(file index, offset in file, length, offset in the range)`` covering the range."""
        return pieces(self.files, offset, nbytes)


def pieces(files: Sequence[FileRange], offset: int, nbytes: int) -> Iterator[tuple[int, int, int, int]]:
    end = offset + nbytes
    for i, f in enumerate(files):
        lo, hi = max(offset, f.start), min(end, f.end)
        if lo < hi:
            yield i, lo - f.start, hi - lo, lo - offset


def plan_layout(tensors: Sequence[tuple[str, torch.dtype, tuple[int, ...], bool, Chunk | None]], num_files: int,
                prefix: str = "") -> Layout:
    """Lay ``(fqn, dtype, shape, replicated, chunk)`` end to end and cut the stream into files."""
    slots: list[Slot] = []
    offset = 0
    for fqn, dtype, shape, replicated, chunk in tensors:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        slots.append(Slot(fqn, dtype_name(dtype), tuple(shape), offset, nbytes, replicated, chunk))
        offset += -(-nbytes // ALIGN) * ALIGN
    total = offset
    count = max(1, min(num_files, total // MIN_FILE_BYTES))
    chunk = -(-(-(-total // count)) // PAGE) * PAGE if total else 0
    files = []
    for i in range(count):
        start = i * chunk
        size = max(0, min(total, start + chunk) - start)
        if size or i == 0:
            files.append(FileRange(f"{prefix}data.{i}", start, size))
    return Layout(tuple(slots), tuple(files), total)
