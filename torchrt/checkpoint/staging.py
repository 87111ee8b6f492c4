"""Staging: copying the live state into persistent host buffers.

Design
------
:class:`HostBuffer` is one flat ``uint8`` tensor per manager, allocated on the
first save (or by ``CheckpointManager.prepare``), *pre-touched* (every page
faulted in once, which is the slow part of new memory: ~1 GB/s here against
~6-9 GB/s for copies into touched pages) and reused by every later save. It
grows only when the state grows (an optimizer gaining its moments after the
first step). Its kind:

* ``pinned``: page-locked memory when CUDA is available, so device-to-host
  copies run asynchronously on a separate copy stream;
* ``private`` (the default on CPU builds): anonymous memory aligned to 2 MiB
  and advised to be backed by transparent huge pages (``MADV_HUGEPAGE``). The
  writers send it to the disk with ``O_DIRECT``, and a direct-I/O request can
  carry only so many physically contiguous segments (``max_segments``, 254 on
  the development VM): 4 KiB pages scattered by a fragmented memory cap a
  request near 0.5-1 MiB, while 2 MiB pages let it reach several MiB.
  Measured on 2 ranks x 512 MiB after other checkpointing code had run in the
  same processes: 2,100 write requests and 0.7x the raw disk rate with 4 KiB
  pages, against ~340 requests and ~0.95x with contiguous memory;
* ``shared``: POSIX shared memory (``/dev/shm``), on request, for a buffer to
  be handed to another process; used only if ``/dev/shm`` has room for it
  (touching shm past its size is a SIGBUS, not an exception), otherwise
  private. (shmem gets no transparent huge pages unless the administrator
  enabled them.)

:class:`Staging` is one save's copy of the state into the buffer, laid out by
:mod:`~torchrt.checkpoint.layout`. ``save()`` copies the *small* tensors at
once (model buffers such as BatchNorm statistics, which the next forward pass
mutates, and scalars) and hands the rest to the manager's background thread,
which copies them in stream order and advances a :class:`Watermark` the file
writers follow, so writing starts while staging is still going on.

Misuse is loud, never silent: every tensor's in-place version counter is
recorded at ``save()`` and checked right after its copy. A tensor mutated in
between fails that checkpoint with :class:`StagingError` (it is not committed)
and ``wait_staged()`` raises. The manager also waits for staging in a global
optimizer step pre-hook, so ``optimizer.step()`` cannot race the copy.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections.abc import Sequence
from typing import Literal

import torch

from torchrt.checkpoint._faults import FAULTS
from torchrt.checkpoint.errors import StagingError
from torchrt.checkpoint.layout import PAGE, Layout

logger = logging.getLogger(__name__)

__all__ = ["BufferKind", "HostBuffer", "Staging", "Watermark"]

BufferKind = Literal["auto", "pinned", "shared", "private"]
_SUBCHUNK = 64 << 20  # copy big contiguous tensors in pieces so writers can follow


def _shm_free_bytes() -> int:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


HUGE_PAGE = 2 << 20


def _huge_page_backed(nbytes: int) -> torch.Tensor:
    """Private anonymous memory on a 2 MiB boundary, advised to be backed by transparent huge
    pages (see the module docstring); plain 4 KiB pages where the kernel says no. The tensor
    keeps the mapping alive."""
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mapping.madvise(mmap.MADV_HUGEPAGE)
        except OSError as e:  # THP compiled out or disabled: still correct, only slower direct I/O
            logger.debug("checkpoint staging: no transparent huge pages (%s)", e)
    whole = torch.frombuffer(mapping, dtype=torch.uint8)
    skip = -whole.data_ptr() % HUGE_PAGE
    return whole[skip:skip + nbytes]


class HostBuffer:
    """A persistent, pre-touched host buffer that grows on demand and is otherwise reused."""

    def __init__(self, kind: BufferKind = "auto") -> None:
        if kind not in ("auto", "pinned", "shared", "private"):
            raise ValueError(f"unknown staging buffer kind {kind!r}")
        self.requested = kind
        self.kind: str = "none"
        self.allocations = 0
        self.alloc_s = 0.0
        self._buf: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self._buf is None else self._buf.numel()

    def ensure(self, nbytes: int) -> torch.Tensor:
        """The first ``nbytes`` of the buffer, (re)allocating and pre-touching if it is too small."""
        if self._buf is None or self._buf.numel() < nbytes:
            self._allocate(-(-max(nbytes, 1) // PAGE) * PAGE)
        assert self._buf is not None
        return self._buf[:nbytes]

    def _allocate(self, nbytes: int) -> None:
        self._buf = None  # free the old one first
        started = time.perf_counter()
        kind = self.requested
        if kind == "auto":
            kind = "pinned" if torch.cuda.is_available() else "private"
        if kind == "shared" and _shm_free_bytes() < nbytes + (64 << 20):
            logger.warning("checkpoint staging: /dev/shm has %.1f GiB free, need %.1f GiB; using private memory",
                           _shm_free_bytes() / 2**30, nbytes / 2**30)
            kind = "private"
        if kind == "pinned":
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        elif kind == "shared":
            try:
                buf = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
            except RuntimeError as e:  # e.g. a file size limit on the shm file
                logger.warning("checkpoint staging: no shared memory (%s); using private memory", e)
                kind = "private"
                buf = _huge_page_backed(nbytes)
        else:
            buf = _huge_page_backed(nbytes)
        buf.fill_(0)  # pre-touch: fault every page in now, not during a save
        self._buf = buf
        self.kind = kind
        self.allocations += 1
        elapsed = time.perf_counter() - started
        self.alloc_s += elapsed
        logger.info("checkpoint staging: allocated %.1f MiB of %s host memory in %.3f s",
                    nbytes / 2**20, kind, elapsed)

    def release(self) -> None:
        self._buf = None


class Watermark:
    """How many bytes of the stream are staged; writers wait on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value = 0
        self._error: BaseException | None = None

    def advance(self, value: int) -> None:
        with self._cond:
            if value > self._value:
                self._value = value
                self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def wait_for(self, value: int) -> None:
        with self._cond:
            while self._value < value and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return None


class Staging:
    """One save's copy of ``tensors`` (aligned with ``layout.slots``) into ``buffer``."""

    def __init__(self, step: int, buffer: torch.Tensor, layout: Layout, tensors: Sequence[torch.Tensor],
                 copy_stream: object | None = None) -> None:
        self.step = step
        self.buffer = buffer
        self.layout = layout
        self.tensors = list(tensors)
        self.versions = [_version(t) for t in self.tensors]
        self.done = [False] * len(self.tensors)
        self.watermark = Watermark()
        self._cuda_event = None
        self._copy_stream = copy_stream

    def _dest(self, i: int) -> torch.Tensor:
        slot = self.layout.slots[i]
        flat = self.buffer[slot.offset:slot.offset + slot.nbytes]
        return flat.view(self.tensors[i].dtype).view(self.tensors[i].shape)

    def _check(self, i: int) -> None:
        if self.versions[i] is not None and _version(self.tensors[i]) != self.versions[i]:
            name = self.layout.slots[i].fqn
            raise StagingError(
                f"checkpoint step {self.step}: tensor {name!r} was modified in place while it was being "
                "staged; call handle.wait_staged() or manager.before_mutation() before mutating state "
                "(optimizer.step() waits by itself). This checkpoint is not committed.")

    def start(self, sync_bytes: int) -> None:
        """In the caller's thread: copy small CPU tensors now, enqueue device copies."""
        cuda = [i for i, t in enumerate(self.tensors) if t.is_cuda]
        if cuda:
            stream = self._copy_stream
            assert stream is not None
            stream.wait_stream(torch.cuda.current_stream())  # type: ignore[attr-defined]
            with torch.cuda.stream(stream):  # type: ignore[arg-type]
                for i in cuda:
                    self._dest(i).copy_(self.tensors[i], non_blocking=True)
                    self.tensors[i].record_stream(stream)  # type: ignore[arg-type]
                self._cuda_event = torch.cuda.Event()
                self._cuda_event.record(stream)
        for i, t in enumerate(self.tensors):
            if not t.is_cuda and self.layout.slots[i].nbytes <= sync_bytes:
                self._dest(i).copy_(t)
                self.done[i] = True
        if not cuda and all(self.done):
            self.watermark.advance(self.layout.total)

    def run(self) -> None:
        """In the background: copy the rest in stream order, checking each tensor after its copy."""
        try:
            FAULTS.before_stage(self.step)
            if self._cuda_event is not None:
                self._cuda_event.synchronize()
                for i, t in enumerate(self.tensors):
                    if t.is_cuda:
                        self._check(i)
                        self.done[i] = True
            slots = self.layout.slots
            for i, t in enumerate(self.tensors):
                if not self.done[i]:
                    dest = self._dest(i)
                    if t.is_contiguous() and slots[i].nbytes > _SUBCHUNK:
                        src_flat, dst_flat = t.view(-1), dest.view(-1)
                        step = max(1, _SUBCHUNK // t.element_size())
                        for lo in range(0, src_flat.numel(), step):
                            dst_flat[lo:lo + step].copy_(src_flat[lo:lo + step])
                            self.watermark.advance(slots[i].offset + min(lo + step, src_flat.numel())
                                                   * t.element_size())
                    else:
                        dest.copy_(t)
                    self._check(i)  # tensors copied in start() were checked there, by construction
                    self.done[i] = True
                next_offset = slots[i + 1].offset if i + 1 < len(slots) else self.layout.total
                self.watermark.advance(next_offset)
            self.watermark.advance(self.layout.total)
        except BaseException as e:
            self.watermark.fail(e if isinstance(e, StagingError) else StagingError(f"staging failed: {e}"))
            raise
        finally:
            self.tensors = []  # drop references to the live state
