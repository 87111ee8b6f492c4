"""Writing a rank's shard: parallel, checksummed, durable.

Design
------
:class:`WriterPool` keeps ``writer_threads`` threads for the manager's
lifetime. A rank's logical byte stream (see :mod:`~torchrt.checkpoint.layout`)
is cut into that many data files; each thread writes one file sequentially in
8 MiB blocks straight from the staging buffer (``os.write`` of a memoryview:
no copy in Python), computing its CRC-32 on the way
(:mod:`~torchrt.checkpoint.checksum`, which releases the GIL) in a second
thread over the same blocks, so the writer keeps the device busy while the
checksum uses the CPU (the checksums start once staging is complete, so they
do not slow the copy the training loop may wait for), and ``fsync``-ing it
at the end.
Writers follow the staging :class:`~torchrt.checkpoint.staging.Watermark`:
a block is written as soon as it is staged, so copying and writing overlap.

Data files are written with ``O_DIRECT`` where the filesystem allows it (the
staging buffer and every file's range are page aligned): the bytes go from
the staging buffer to the device without a copy into the page cache, which
on a 2-core machine is CPU the staging copy and the checksums need, and a
checkpoint does not evict the training data from the page cache. An
unaligned tail, or a filesystem that refuses direct I/O (tmpfs, some FUSE
mounts), falls back to ordinary buffered writes; ``fsync`` follows either way.

Small files (the rank's serialised tree, the ``rank<r>.done`` record, the
manifest and ``latest``) go through :func:`write_atomic`: temporary file,
``fsync``, ``rename``, ``fsync`` of the directory. Directories are fsynced
after files are created in them so the names are durable too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import fcntl
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from torchrt.checkpoint._faults import FAULTS
from torchrt.checkpoint.checksum import crc32
from torchrt.checkpoint.layout import FileRange
from torchrt.checkpoint.staging import Watermark

logger = logging.getLogger(__name__)

__all__ = ["BLOCK", "WriteBatch", "WriterPool", "WrittenFile", "fsync_dir", "write_atomic"]

BLOCK = 8 << 20
DIRECT_ALIGN = 4096
DIRECT_MIN = 1 << 20  # smaller files are not worth direct I/O


@dataclasses.dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the checkpoint (step) directory
    size: int
    crc32: int

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "crc32": self.crc32}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview, path: Path | None = None) -> None:
    """Write all of ``view``; an error names ``path`` (``os.write`` errors carry no file name)."""
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path) if path else None) from e


def _fsync(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e


def _open_for_write(path: Path, direct: bool) -> tuple[int, bool]:
    """Open for writing, with ``O_DIRECT`` if asked and the filesystem allows it; returns (fd, direct)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as e:
            if e.errno != errno.EINVAL:  # e.g. tmpfs: no direct I/O; anything else is a real error
                raise OSError(e.errno, e.strerror, str(path)) from e
    try:
        return os.open(path, flags, 0o644), False
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e


def _write_direct(fd: int, block: memoryview, path: Path) -> bool:
    """Write an aligned block with O_DIRECT; an unaligned tail (or a refusal) goes through the page
    cache. Returns whether the descriptor is still in direct mode."""
    aligned = len(block) - len(block) % DIRECT_ALIGN
    try:
        if aligned:
            _write_exact_direct(fd, block[:aligned])
        if aligned == len(block):
            return True
        block = block[aligned:]
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise OSError(e.errno, e.strerror, str(path)) from e
        logger.debug("checkpoint writer: %s refused direct I/O (%s); using the page cache", path, e)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    _write_all(fd, block, path)
    return False


def _write_exact_direct(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        if n % DIRECT_ALIGN and n != len(view):  # a short, unaligned write: finish through the page cache
            raise OSError(errno.EINVAL, "short unaligned direct write")
        view = view[n:]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (tmp + fsync + rename + dir fsync)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, memoryview(data), path)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class WriteBatch:
    """The files of one save being written."""

    def __init__(self, step_dir: Path,
                 futures: list[tuple[concurrent.futures.Future, concurrent.futures.Future | None]]) -> None:
        self._step_dir = step_dir
        self._futures = futures

    def result(self) -> list[WrittenFile]:
        """Wait for every file; raise the first error once all are finished; fsync their directories."""
        results, error = [], None
        for write, checksum in self._futures:
            try:
                written = write.result()
                if checksum is not None:
                    written = dataclasses.replace(written, crc32=checksum.result())
                results.append(written)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                error = error or e
            finally:
                if checksum is not None:
                    concurrent.futures.wait([checksum])
        if error is not None:
            raise error
        for directory in {(self._step_dir / r.path).parent for r in results}:
            fsync_dir(directory)
        return results


class WriterPool:
    """Parallel writers for one rank's files."""

    def __init__(self, threads: int, direct_io: bool = True) -> None:
        self.threads = threads
        self.direct_io = direct_io
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="torchrt-ckpt-writer")
        self._sums = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="torchrt-ckpt-crc")

    def start(self, step: int, step_dir: Path, buffer: torch.Tensor, files: Sequence[FileRange],
              watermark: Watermark, extras: Mapping[str, bytes]) -> WriteBatch:
        """Start writing ``files`` (ranges of ``buffer``, following ``watermark``) and ``extras``.

        File names are relative to ``step_dir``; their directories must exist.
        Returns at once; :meth:`WriteBatch.result` waits for durability.
        """
        view = memoryview(buffer.numpy()) if buffer.numel() else memoryview(b"")
        aligned = buffer.data_ptr() % DIRECT_ALIGN == 0
        staged_end = max((f.end for f in files), default=0)
        futures: list[tuple[concurrent.futures.Future, concurrent.futures.Future | None]] = [
            (self._pool.submit(self._write_range, step, step_dir / f.name, f.name, view, f, watermark, aligned),
             self._sums.submit(_checksum_range, view, f, watermark, staged_end)) for f in files]
        futures += [(self._pool.submit(self._write_bytes, step, step_dir / name, name, data), None)
                    for name, data in extras.items()]
        return WriteBatch(step_dir, futures)

    def _write_range(self, step: int, path: Path, name: str, view: memoryview, rng: FileRange,
                     watermark: Watermark, aligned: bool) -> WrittenFile:
        FAULTS.before_write(step)
        direct = self.direct_io and aligned and rng.size >= DIRECT_MIN and rng.start % DIRECT_ALIGN == 0
        fd, direct = _open_for_write(path, direct)
        try:
            pos = rng.start
            half = rng.start + rng.size // 2
            while pos < rng.end:
                end = min(pos + BLOCK, rng.end)
                watermark.wait_for(end)
                block = view[pos:end]
                if direct:
                    direct = _write_direct(fd, block, path)
                else:
                    _write_all(fd, block, path)
                if pos < half <= end:
                    FAULTS.mid_write(step, path)
                pos = end
            _fsync(fd, path)
        finally:
            os.close(fd)
        return WrittenFile(name, rng.size, -1)  # the checksum comes from _checksum_range

    @staticmethod
    def _write_bytes(step: int, path: Path, name: str, data: bytes) -> WrittenFile:
        FAULTS.before_write(step)
        fd, _ = _open_for_write(path, False)
        try:
            _write_all(fd, memoryview(data), path)
            _fsync(fd, path)
        finally:
            os.close(fd)
        return WrittenFile(name, len(data), crc32(data))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._sums.shutdown(wait=True)


def _checksum_range(view: memoryview, rng: FileRange, watermark: Watermark, staged_end: int) -> int:
    """CRC-32 of a file's range (runs beside the file's writer).

    It starts once the whole stream is staged: on a small machine the staging copy
    and the checksums compete for the same cores, and the copy is what the training
    loop may be waiting for (``optimizer.step()``); the writers, which mostly wait
    for the device, start at once.
    """
    watermark.wait_for(staged_end)
    crc, pos = 0, rng.start
    while pos < rng.end:
        end = min(pos + BLOCK, rng.end)
        watermark.wait_for(end)
        crc = crc32(view[pos:end], crc)
        pos = end
    return crc

