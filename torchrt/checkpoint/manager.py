"""``CheckpointManager``: the training loop's interface to checkpointing.

Design
------
``save(state, step)`` does, in the caller's thread, only what must be done
before training may go on: flatten the state and snapshot its small
non-tensor values (:mod:`~torchrt.checkpoint.state`), copy the small tensors
into the persistent staging buffer, and enqueue the rest. It returns a
:class:`SaveHandle` at once. Three background threads per manager do the rest:

``torchrt-ckpt-pipeline``
    one save at a time, in order: copies the remaining tensors into the
    staging buffer (:mod:`~torchrt.checkpoint.staging`) while the writer pool
    (:mod:`~torchrt.checkpoint.writer`) writes the staged bytes to this rank's
    files; then this rank's ``rank<r>.done`` record and its report to rank 0.
``torchrt-ckpt-commit``
    on rank 0, the commit of each step once every rank reported
    (:mod:`~torchrt.checkpoint.commit`); on the others, waiting for that
    outcome, so ``SaveHandle.wait()`` means the same thing on every rank.
``torchrt-ckpt-trigger``
    only with ``every_seconds`` on several ranks: learns from rank 0 at which
    step the next time-based save happens (clocks differ between ranks, steps
    do not).

Mutation safety. The tensors are copied in the background, so the caller must
not modify them in place until ``handle.wait_staged()`` returns. The manager
installs a global optimizer step pre-hook that waits for the staging, so
``optimizer.step()`` is safe with no extra code; anything else that mutates
state in place must call ``manager.before_mutation()`` (or
``handle.wait_staged()``) first. Forgetting to is loud: every tensor's version
counter is checked after its copy, and a tensor modified too early fails that
checkpoint (``checkpoint_failed`` with ``stage="stage"``), which is never
committed. Small tensors (``sync_stage_bytes``: BatchNorm statistics, which
the forward pass updates, scalars) are copied inside ``save()``.

One save at a time. A save requested while the previous one still occupies
the staging buffer is queued (``when_busy="queue"``: ``save`` waits for the
buffer, counted in ``stall_s``) or skipped (``"skip"``: a
``checkpoint_skipped`` event); with several ranks the first rank to reach the
step decides for all of them, so a step is saved by every rank or by none.

Errors. A failure anywhere (staging, writing, committing) is a
``checkpoint_failed`` event and a log line; with ``on_error="continue"``
training goes on and the next save starts afresh, with ``"stop"`` the next
``save``/``maybe_save``/``wait`` raises :class:`CheckpointFailedError`. The
previous committed checkpoint is never touched by a failed save.
"""

from __future__ import annotations

import atexit
import collections
import enum
import logging
import math
import queue
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from torchrt.checkpoint import commit as commit_mod
from torchrt.checkpoint._faults import FAULTS
from torchrt.checkpoint.checksum import CRC32_IMPL
from torchrt.checkpoint.errors import CheckpointError, CheckpointFailedError, StagingError
from torchrt.checkpoint.group import CheckpointGroup, default_group
from torchrt.checkpoint.layout import Layout, dtype_name, plan_layout
from torchrt.checkpoint.manifest import RankRecord, replicated_digest
from torchrt.checkpoint.restore import PerRankOnResize, RestoreResult, restore_latest
from torchrt.checkpoint.spec import CheckpointSpec, OnError, WhenBusy
from torchrt.checkpoint.staging import BufferKind, HostBuffer, Staging
from torchrt.checkpoint.state import FlatState, ShardRef, TensorRef, dumps_tree, flatten, iter_leaves
from torchrt.checkpoint.throughput import mbytes_per_second
from torchrt.checkpoint.writer import WriterPool
from torchrt.contract import EventType
from torchrt.telemetry import get_reporter
from torchrt.telemetry.steps import note_wait

logger = logging.getLogger(__name__)

__all__ = ["CheckpointManager", "SaveHandle", "SaveStatus"]

_TRIGGER_LOOKAHEAD = 4  # steps between rank 0 noticing a time-based save is due and the step it happens at


class SaveStatus(str, enum.Enum):
    PENDING = "pending"
    COMMITTED = "committed"
    FAILED = "failed"
    SKIPPED = "skipped"


class SaveHandle:
    """One requested save. ``wait_staged()`` before mutating state; ``wait()`` for the commit."""

    def __init__(self, step: int, path: Path) -> None:
        self.step = step
        self.path = path
        self.status = SaveStatus.PENDING
        self.error: BaseException | None = None
        self.stage_error: StagingError | None = None
        self.stall_s = 0.0  # the caller's time blocked by this save (save() plus waits for staging)
        self.stage_s: float | None = None  # save() call -> everything staged
        self.write_s: float | None = None  # background work start -> this rank's files durable
        self.total_s: float | None = None  # save() call -> committed (or failed); wait() also covers retention
        self.bytes = 0
        self._t0 = time.perf_counter()
        self._staged = threading.Event()
        self._finished = threading.Event()

    def __repr__(self) -> str:
        return f"SaveHandle(step={self.step}, status={self.status.value})"

    @property
    def staged(self) -> bool:
        return self._staged.is_set()

    def done(self) -> bool:
        return self._finished.is_set()

    def wait_staged(self, timeout: float | None = None) -> None:
        """Block until the state is copied; raises :class:`StagingError` if it was mutated too early."""
        if not self._staged.is_set():
            started = time.perf_counter()
            if not self._staged.wait(timeout):
                raise TimeoutError(f"checkpoint step {self.step} not staged after {timeout} s")
            waited = time.perf_counter() - started
            self.stall_s += waited
            note_wait("checkpoint", waited)
        if self.stage_error is not None:
            raise self.stage_error

    def wait(self, timeout: float | None = None) -> SaveStatus:
        """Block until the checkpoint is committed, failed or skipped (on every rank); returns the status."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"checkpoint step {self.step} not finished after {timeout} s")
        return self.status

    def _set_staged(self, error: StagingError | None = None) -> None:
        self.stage_error = error
        self.stage_s = time.perf_counter() - self._t0
        self._staged.set()

    def _finish(self, status: SaveStatus, error: BaseException | None = None) -> None:
        self.status = status
        self.error = error
        if self.total_s is None:
            self.total_s = time.perf_counter() - self._t0
        self._staged.set()
        self._finished.set()


class _Job:
    def __init__(self, handle: SaveHandle, staging: Staging, tree: bytes, digest: str) -> None:
        self.handle = handle
        self.staging = staging
        self.tree = tree
        self.digest = digest
        self.record: dict | None = None


class CheckpointManager:
    """Asynchronous sharded checkpoints with atomic commit, retention and verified restore.

    Create it on every rank after the process group is initialised (creation
    is a collective when there are several ranks), with the same ``dir``
    (a filesystem every rank sees) and settings.

    ``replicated``: top-level state keys whose contents are identical on every
    rank (the model and optimizer under DDP, a torchrt.data pipeline whose
    position is global, the step counter). Their tensors are written once for
    the whole job, spread over the ranks, and they restore at any world size.
    Every other key is per-rank (RNG states, per-rank objects).
    """

    def __init__(self, dir: str | Path, every_steps: int | None = None, every_seconds: float | None = None,
                 keep: int = 3, async_save: bool = True, writer_threads: int = 4, on_error: OnError = "continue",
                 when_busy: WhenBusy = "queue", *, replicated: Collection[str] = (), staging: BufferKind = "auto",
                 sync_stage_bytes: int = 64 << 10, commit_timeout: float = 600.0, direct_io: bool = True,
                 group: CheckpointGroup | None = None) -> None:
        self.spec = CheckpointSpec(dir=str(dir), every_steps=every_steps, every_seconds=every_seconds, keep=keep,
                                   async_save=async_save, writer_threads=writer_threads, on_error=on_error,
                                   when_busy=when_busy)
        if isinstance(replicated, str):
            replicated = (replicated,)
        self.replicated: frozenset[str] = frozenset(replicated)
        self.root = Path(dir)
        self.group = group if group is not None else default_group()
        self.rank = self.group.rank
        self.world_size = self.group.world_size
        self._sync_stage_bytes = sync_stage_bytes
        self._commit_timeout = commit_timeout
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # saves will fail with events; on_error decides what happens then
            logger.warning("checkpoint: cannot create %s: %s", self.root, e)
        self._buffer = HostBuffer(staging)
        self._writers = WriterPool(writer_threads, direct_io=direct_io)
        self._copy_stream: Any = None
        self._layout_key: tuple | None = None
        self._layout: Layout | None = None
        self._digest = ""
        self._owners: dict[str, int] = {}
        self._buffer_free = threading.Event()
        self._buffer_free.set()
        self._writing_step: int | None = None
        self._current: SaveHandle | None = None
        self._inflight: list[SaveHandle] = []
        self._fatal: CheckpointFailedError | None = None
        self._last_step: int | None = None
        self._last_save_time = time.monotonic()
        self._triggers: collections.deque[int] = collections.deque()
        self._trigger_seq = 0
        self._watch_seq = 1
        self._lock = threading.Lock()
        self._closed = False
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._finishing: queue.Queue[_Job | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._pipeline_loop, name="torchrt-ckpt-pipeline", daemon=True),
                         threading.Thread(target=self._finish_loop, name="torchrt-ckpt-commit", daemon=True)]
        if every_seconds is not None and self.world_size > 1 and self.rank != 0:
            self._threads.append(threading.Thread(target=self._trigger_loop, name="torchrt-ckpt-trigger",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        self._hook = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: self.before_mutation())
        atexit.register(self._atexit)

    @classmethod
    def from_spec(cls, spec: CheckpointSpec, **kwargs: Any) -> CheckpointManager:
        """A manager configured by the YAML ``checkpoint`` section; ``kwargs`` as in the constructor."""
        return cls(spec.dir, every_steps=spec.every_steps, every_seconds=spec.every_seconds, keep=spec.keep,
                   async_save=spec.async_save, writer_threads=spec.writer_threads, on_error=spec.on_error,
                   when_busy=spec.when_busy, **kwargs)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ saving

    def prepare(self, state: Mapping[str, Any]) -> None:
        """Allocate (and pre-touch) the staging buffer for ``state`` now rather than in the first save."""
        self._check_open()
        flat = flatten(state, self.replicated)
        layout, _ = self._plan(flat)
        self._wait_buffer()
        self._buffer.ensure(layout.total)

    def save(self, state: Mapping[str, Any], step: int) -> SaveHandle:
        """Checkpoint ``state`` as ``step``; returns once the copy is under way (see the module docstring)."""
        self._check_open()
        self._raise_fatal()
        t0 = time.perf_counter()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"step must be a non-negative integer, got {step!r}")
        if self._last_step is not None and step <= self._last_step:
            raise CheckpointError(f"checkpoint steps must increase: step {step} after step {self._last_step}")
        path = self.root / commit_mod.step_dir_name(step)
        handle = SaveHandle(step, path)
        handle._t0 = t0
        busy = not self._buffer_free.is_set()
        if self.spec.when_busy == "skip":
            decision = self.group.decide(step, "skip" if busy else "save")
            if decision == "skip":
                detail = (f"step {self._writing_step} is still being written" if busy
                          else "another rank was still writing the previous checkpoint")
                self._emit(EventType.CHECKPOINT_SKIPPED, step=step, reason="busy", detail=detail, path=str(path))
                logger.info("checkpoint: skipped step %d: %s", step, detail)
                handle._finish(SaveStatus.SKIPPED)
                self._last_step = step
                return handle
        if not self._buffer_free.is_set():
            FAULTS.busy(step)
        self._wait_buffer()
        queued_s = time.perf_counter() - t0
        self._last_save_time = time.monotonic()
        flat = flatten(state, self.replicated)
        tree = dumps_tree(flat.tree)
        layout, digest = self._plan(flat)
        tensors = [flat.tensors[s.fqn] for s in layout.slots]
        buffer = self._buffer.ensure(layout.total)
        if any(t.is_cuda for t in tensors) and self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream()
        staging = Staging(step, buffer, layout, tensors, self._copy_stream)
        sync = not self.spec.async_save
        staging.start(math.inf if sync else self._sync_stage_bytes)  # type: ignore[arg-type]
        job = _Job(handle, staging, tree, digest)
        job.record = {"queued_s": queued_s}
        self._buffer_free.clear()
        self._writing_step = step
        self._last_step = step
        with self._lock:
            self._current = handle
            self._inflight.append(handle)
        handle.stall_s = time.perf_counter() - t0
        self._jobs.put(job)
        if sync:
            handle.wait()
            handle.stall_s = time.perf_counter() - t0
            self._raise_fatal()
        note_wait("checkpoint", handle.stall_s)  # the training step's stall, in its step report
        return handle

    def maybe_save(self, state: Mapping[str, Any], step: int) -> SaveHandle | None:
        """Save if ``every_steps`` divides ``step`` or ``every_seconds`` elapsed (agreed by all ranks)."""
        self._check_open()
        self._raise_fatal()
        due = self.spec.every_steps is not None and step % self.spec.every_steps == 0
        if self.spec.every_seconds is not None:
            due = self._time_due(step) or due
        return self.save(state, step) if due else None

    def before_mutation(self) -> None:
        """Block until the in-flight save no longer needs the live tensors (called by optimizer.step())."""
        handle = self._current
        if handle is not None and not handle._staged.is_set():
            started = time.perf_counter()
            handle._staged.wait()
            waited = time.perf_counter() - started
            handle.stall_s += waited
            note_wait("checkpoint", waited)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every save so far is committed, failed or skipped; raises per ``on_error``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [h for h in self._inflight if not h.done()]
            if not pending:
                break
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            pending[0].wait(left)
        self._raise_fatal()

    def close(self, timeout: float | None = None) -> None:
        """Finish in-flight saves, then stop the threads and free the staging buffer."""
        if self._closed:
            return
        try:
            self.wait(timeout)
        finally:
            self._shutdown()

    # ----------------------------------------------------------------- restoring

    def load_latest(self, state: dict[str, Any], *, strict: bool = True,
                    per_rank_on_resize: PerRankOnResize = "error") -> RestoreResult | None:
        """Restore the newest committed checkpoint that verifies into ``state``; ``None`` if there is none.

        A collective when there are several ranks. Corrupt or partial
        checkpoints are skipped (``checkpoint_skipped``) in favour of the
        previous committed one; if every committed checkpoint is bad,
        :class:`~torchrt.checkpoint.errors.NoValidCheckpointError` is raised.
        """
        self._check_open()
        result = restore_latest(self.root, state, self.group, strict=strict,
                                per_rank_on_resize=per_rank_on_resize, threads=self.spec.writer_threads)
        self._last_save_time = time.monotonic()
        return result

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this CheckpointManager is closed")

    def _raise_fatal(self) -> None:
        if self._fatal is not None and self.spec.on_error == "stop":
            raise self._fatal

    def _emit(self, type: str, **fields: Any) -> None:
        get_reporter().emit(type, rank=self.rank, world_size=self.world_size, **fields)

    def _wait_buffer(self) -> None:
        self._buffer_free.wait()

    def _plan(self, flat: FlatState) -> tuple[Layout, str]:
        """This rank's layout (cached while the state's structure is unchanged) and the replicated digest."""
        entries = tuple((fqn, t.dtype, tuple(t.shape), fqn in flat.replicated, flat.chunks.get(fqn))
                        for fqn, t in flat.tensors.items())
        objects: list[str] = []
        rep_tree = {k: v for k, v in flat.tree.items() if k in self.replicated}
        iter_leaves(rep_tree, lambda fqn, leaf: None if isinstance(leaf, (TensorRef, ShardRef))
                   else objects.append(fqn))
        key = (entries, tuple(objects))
        if key != self._layout_key:
            rep = sorted(((f, math.prod(s) * torch.empty((), dtype=d).element_size())
                          for f, d, s, r, _ in entries if r), key=lambda x: (-x[1], x[0]))
            loads = [0] * self.world_size
            owners: dict[str, int] = {}
            for fqn, nbytes in rep:
                r = loads.index(min(loads))
                owners[fqn] = r
                loads[r] += nbytes
            mine = [e for e in entries if not e[3] or owners[e[0]] == self.rank]
            self._owners = owners
            self._layout = plan_layout(mine, self.spec.writer_threads, prefix=f"rank{self.rank}/")
            self._digest = replicated_digest([(f, dtype_name(d), s) for f, d, s, r, _ in entries if r], objects)
            self._layout_key = key
        assert self._layout is not None
        return self._layout, self._digest

    def _time_due(self, step: int) -> bool:
        assert self.spec.every_seconds is not None
        elapsed = time.monotonic() - self._last_save_time >= self.spec.every_seconds
        if self.world_size == 1:
            return elapsed
        with self._lock:
            if self.rank == 0 and elapsed and not self._triggers:
                self._trigger_seq += 1
                target = step + _TRIGGER_LOOKAHEAD
                self.group.post_trigger(self._trigger_seq, target)
                self._triggers.append(target)
            missed = []
            while self._triggers and self._triggers[0] < step:
                missed.append(self._triggers.popleft())
            due = bool(self._triggers) and self._triggers[0] == step
            if due:
                self._triggers.popleft()
        for target in missed:  # tell rank 0 at once, so it does not wait for this rank's report
            detail = f"rank {self.rank} was at step {step} when it learned of the time-based save at step {target}"
            self._emit(EventType.CHECKPOINT_SKIPPED, step=target, reason="missed_trigger", detail=detail,
                       path=str(self.root / commit_mod.step_dir_name(target)))
            self.group.report(target, {"ok": False, "rank": self.rank, "stage": "trigger", "error": detail})
        return due

    def _trigger_loop(self) -> None:
        while not self._closed:
            try:
                target = self.group.wait_trigger(self._watch_seq, 365 * 86400.0)
            except Exception as e:  # noqa: BLE001 - the store went away: nothing more to learn
                if not self._closed:
                    logger.warning("checkpoint: stopped listening for time-based saves: %s", e)
                return
            if target is None:
                return
            with self._lock:
                self._triggers.append(target)
            self._watch_seq += 1

    # The pipeline thread: stage, write, record, report.

    def _pipeline_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._run_job(job)
            except BaseException as e:  # never let the thread die with a save unresolved
                logger.exception("checkpoint: internal error in step %d", job.handle.step)
                self._fail(job, "write", e)
                self._buffer_free.set()

    def _run_job(self, job: _Job) -> None:
        handle, staging, step = job.handle, job.staging, job.handle.step
        layout = staging.layout
        started = time.perf_counter()
        try:
            step_dir = commit_mod.prepare_rank_dir(self.root, step, self.rank)
        except OSError as e:
            handle._set_staged()
            staging.tensors = []
            self._buffer_free.set()
            self._fail(job, "write", e)
            return
        tree_name = f"rank{self.rank}/tree.pt"
        batch = self._writers.start(step, step_dir, staging.buffer, layout.files, staging.watermark,
                                    {tree_name: job.tree})
        stage_error: StagingError | None = None
        try:
            staging.run()
        except StagingError as e:
            stage_error = e
        except Exception as e:  # noqa: BLE001 - reported as a staging failure
            stage_error = StagingError(f"checkpoint step {step}: staging failed: {e}")
        handle._set_staged(stage_error)
        try:
            written = batch.result()
        except BaseException as e:  # noqa: BLE001
            self._buffer_free.set()
            commit_mod.remove_rank_files(self.root, step, self.rank)
            if stage_error is not None:
                self._fail(job, "stage", stage_error)
            else:
                self._fail(job, "write", e)
            return
        self._buffer_free.set()
        if stage_error is not None:
            commit_mod.remove_rank_files(self.root, step, self.rank)
            self._fail(job, "stage", stage_error)
            return
        write_s = time.perf_counter() - started
        nbytes = sum(w.size for w in written)
        handle.write_s, handle.bytes = write_s, nbytes
        stats = {"bytes": nbytes, "stall_s": round(handle.stall_s, 6), "stage_s": round(handle.stage_s or 0, 6),
                 "write_s": round(write_s, 6), "mb_s": mbytes_per_second(nbytes, write_s),
                 "queued_s": round((job.record or {}).get("queued_s", 0.0), 6), "files": len(written),
                 "staging": self._buffer.kind, "checksum": CRC32_IMPL}
        record = RankRecord(rank=self.rank, tree=tree_name, data_files=list(layout.files),
                            slots={s.fqn: s for s in layout.slots},
                            files=list(written), replicated_digest=job.digest, stats=stats)
        try:
            commit_mod.write_done(step_dir, record)
        except OSError as e:
            commit_mod.remove_rank_files(self.root, step, self.rank)
            self._fail(job, "write", e)
            return
        self._emit(EventType.CHECKPOINT_SAVED, step=step, path=str(step_dir), **stats)
        logger.info("checkpoint: step %d rank %d durable: %.1f MB in %.3f s (%.0f MB/s), stall %.4f s",
                    step, self.rank, nbytes / 1e6, write_s, stats["mb_s"], handle.stall_s)
        job.record = record.to_json()
        if self.rank != 0:
            self.group.report(step, job.record)
        self._finishing.put(job)

    def _fail(self, job: _Job, stage: str, error: BaseException, report: bool = True) -> None:
        """A save failed on this rank: event, log, policy; tell rank 0 so it stops waiting."""
        handle = job.handle
        message = _describe(error)
        self._emit(EventType.CHECKPOINT_FAILED, step=handle.step, stage=stage, error=message,
                   error_type=type(error).__name__, path=str(handle.path))
        logger.error("checkpoint: step %d failed on rank %d during %s: %s", handle.step, self.rank, stage, message)
        if not handle.staged:
            handle._set_staged(error if isinstance(error, StagingError) else None)
        if self.spec.on_error == "stop" and self._fatal is None:
            self._fatal = CheckpointFailedError(handle.step, stage, message)
        if report:
            job.record = {"ok": False, "rank": self.rank, "stage": stage, "error": message}
            if self.rank != 0:
                self.group.report(handle.step, job.record)
            self._finishing.put(job)

    # The commit thread: rank 0 commits, the others wait for the outcome.

    def _finish_loop(self) -> None:
        while (job := self._finishing.get()) is not None:
            try:
                self._finish(job)
            except BaseException as e:  # noqa: BLE001
                logger.exception("checkpoint: internal error finishing step %d", job.handle.step)
                job.handle._finish(SaveStatus.FAILED, e)

    def _finish(self, job: _Job) -> None:
        handle, step = job.handle, job.handle.step
        own = job.record or {"ok": False, "rank": self.rank, "error": "no record"}
        if self.rank != 0:
            try:
                result = self.group.wait_result(step, self._commit_timeout)
            except Exception as e:  # noqa: BLE001
                result = {"status": "failed", "error": f"no commit outcome from rank 0: {_describe(e)}"}
            self._resolve(handle, result, own)
            return
        try:
            records = self.group.gather(step, own, self._commit_timeout)
            failed = [r for r in records if not r.get("ok", False)]
            if failed:
                raise CheckpointError("; ".join(f"rank {r.get('rank')} failed during {r.get('stage', '?')}: "
                                                f"{r.get('error')}" for r in failed))
            started = time.perf_counter()
            outcome = commit_mod.commit(self.root, step, [RankRecord.from_json(r) for r in records],
                                        sorted(self.replicated))
            commit_s = time.perf_counter() - started
        except BaseException as e:  # noqa: BLE001
            message = _describe(e)
            self.group.publish_result(step, {"status": "failed", "error": message})
            if own.get("ok", False):  # this rank's own failure was reported already
                self._emit(EventType.CHECKPOINT_FAILED, step=step, stage="commit", error=message,
                           error_type=type(e).__name__, path=str(handle.path))
                logger.error("checkpoint: step %d not committed: %s", step, message)
            self._resolve(handle, {"status": "failed", "error": message}, own)
            return
        self.group.publish_result(step, {"status": "committed"})
        total_s = handle.total_s = time.perf_counter() - handle._t0  # committed: retention is not counted
        logger.info("checkpoint: step %d committed (%.1f MB, %.3f s after save())", step, outcome.bytes / 1e6,
                    total_s)
        try:
            deleted = commit_mod.apply_retention(self.root, self.spec.keep, step)
        except OSError as e:
            logger.warning("checkpoint retention after step %d: %s", step, e)
            deleted = []
        self._emit(EventType.CHECKPOINT_COMMITTED, step=step, path=str(outcome.path), bytes=outcome.bytes,
                   total_s=round(total_s, 6), commit_s=round(commit_s, 6),
                   mb_s=mbytes_per_second(outcome.bytes, total_s), deleted=deleted,
                   ranks=[{"rank": r["rank"], **{k: r["stats"][k] for k in ("bytes", "stall_s", "write_s", "mb_s")}}
                          for r in records])
        self._resolve(handle, {"status": "committed"}, own)

    def _resolve(self, handle: SaveHandle, result: dict, own: dict) -> None:
        if result.get("status") == "committed":
            handle._finish(SaveStatus.COMMITTED)
        else:
            error = CheckpointFailedError(handle.step, "commit", str(result.get("error")))
            if self.spec.on_error == "stop" and self._fatal is None:
                self._fatal = error
            handle._finish(SaveStatus.FAILED, error)
        with self._lock:
            self._inflight = [h for h in self._inflight if not h.done()]

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hook.remove()
        if any(t.name == "torchrt-ckpt-trigger" for t in self._threads):
            try:
                seq = self._watch_seq
                for k in (seq, seq + 1):  # the thread may be just moving on to the next one
                    self.group.wake_trigger(k)
            except Exception as e:  # noqa: BLE001
                logger.debug("checkpoint: could not release the trigger thread: %s", e)
        self._jobs.put(None)
        self._finishing.put(None)
        for t in self._threads:
            t.join(timeout=5)
        self._writers.close()
        self._buffer.release()
        self.group.close()
        atexit.unregister(self._atexit)

    def _atexit(self) -> None:
        try:
            self.wait(timeout=min(self._commit_timeout, 60.0))
        except Exception as e:  # noqa: BLE001
            logger.warning("checkpoint: at exit: %s", e)
        self._shutdown()


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or error} ({type(error).__name__}, errno {error.errno}): {error.filename}"
    return str(error) or type(error).__name__

