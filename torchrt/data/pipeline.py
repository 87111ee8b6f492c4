"""Each rank's pipeline, on ``torchdata.nodes``, and its world-size-independent state.

Design
------
For the rest of the current epoch (from the job's global position, see
:mod:`torchrt.data.sampling`) a pipeline is the chain::

    _StepNode  ->  ParallelMapper(BatchReader)  ->  Prefetcher  ->  [PinMemory]  ->  Loader
    (this rank's      (threads or processes;       (prefetch       (only when
     share of each     reads + transforms a         batches)        CUDA is
     global step)      WHOLE batch per task)                        available)

The map stage works on batches, never samples (``facts.md``: mapping samples
then batching is ~5x slower). ``workers=0`` reads and maps in the caller's thread with no
prefetch thread (as ``DataLoader(num_workers=0)``).

The state is **not** torchdata's. torchdata's ``Loader`` state is a snapshot of
per-node iterator positions for one rank at one world size; ours is the job's
``(epoch, global position)`` plus what makes the order reproducible (dataset
name and size, seed, shuffle). The position advances when a batch is *handed
to the caller* (prefetched batches do not count), so ``state_dict()`` taken in
the training loop after batch ``k`` is identical on every rank and counts that
batch as consumed. ``load_state_dict`` (at any world size or batch size) makes
the next ``iter()`` rebuild the chain from that position. torchdata is only
used for the node graph: concurrency, ordering, prefetching and pinning.

Batches are dicts of tensors: the source's fields (``input``, ``target``, ...)
plus ``index`` (int64 global sample indices, ``-1`` for padding) and ``mask``
(bool, ``False`` for padding). Under the ``pad`` tail policy padded rows are
zeroed and an integer ``target`` is set to ``-100`` (``cross_entropy``'s
default ``ignore_index``), so they are inert even if the mask is forgotten.

Errors raised while reading (e.g. :class:`~torchrt.data.errors.ShardCorruptError`)
come back from the workers as values and are re-raised in the caller with
their type and fields intact.

Iterating a pipeline yields the rest of the current epoch; when it is exhausted
the pipeline moves to the next epoch (position 0), so::

    for epoch in range(pipe.epoch, epochs):
        for batch in pipe:
            ...
            if want_checkpoint: save({"data": pipe.state_dict(), ...})
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
import torchdata.nodes as tn

from torchrt.data.errors import DataConfigError, DataStateMismatchError
from torchrt.data.events import DataEvents
from torchrt.data.preview import PreviewTap
from torchrt.data.sampling import TAIL_POLICIES, EpochPlan, GlobalOrder, RankStep, TailPolicy
from torchrt.data.sources import Batch, Source

logger = logging.getLogger(__name__)

__all__ = ["STATE_FORMAT", "BatchReader", "ShardedPipeline", "WorkerMode"]

STATE_FORMAT = "torchrt.data.pipeline/1"
WorkerMode = Literal["threads", "processes"]
PAD_TARGET = -100
Transform = Callable[[Batch], Batch]


@dataclasses.dataclass
class _Mapped:
    """A batch plus its step number and stage timings, as it travels through the node graph."""

    step: int
    batch: Batch
    real: int
    read_s: float
    map_s: float

    def pin_memory(self) -> _Mapped:  # called by torch's pin_memory() in PinMemory's thread
        from torch.utils.data._utils.pin_memory import pin_memory

        self.batch = pin_memory(self.batch)
        return self


@dataclasses.dataclass
class _Failed:
    """An exception raised in a worker, carried to the caller as a value (keeps its type and fields)."""

    step: int
    error: BaseException
    where: str


class BatchReader:
    """The map function: read one rank-step's batch, mark padding, apply the batch transform."""

    def __init__(self, source: Source, transform: Transform | None = None) -> None:
        self.source = source
        self.transform = transform

    def __call__(self, step: RankStep) -> _Mapped | _Failed:
        try:
            t0 = time.perf_counter()
            batch = self.source.read(step.read)
            t1 = time.perf_counter()
            mask = torch.from_numpy(step.mask.copy())
            if not step.mask.all():
                pad = ~mask
                for key, value in batch.items():
                    if isinstance(value, torch.Tensor) and value.ndim and len(value) == len(mask):
                        value[pad] = PAD_TARGET if key == "target" and not value.is_floating_point() \
                            and value.dtype != torch.bool else 0
            batch["index"] = torch.from_numpy(step.indices.copy())
            batch["mask"] = mask
            if self.transform is not None:
                batch = self.transform(batch)
            return _Mapped(step.step, batch, step.real, t1 - t0, time.perf_counter() - t1)
        except Exception as e:
            return _Failed(step.step, _portable(e), traceback.format_exc())


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (needed by process workers), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class _StepNode(tn.BaseNode[RankStep]):
    """Source node: this rank's share of each remaining step of the epoch plan."""

    def __init__(self, plan: EpochPlan, order: np.ndarray, epoch: int, rank: int) -> None:
        super().__init__()
        self.plan, self.order, self.epoch, self.rank = plan, order, epoch, rank
        self._step = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._step = int(initial_state["step"]) if initial_state else 0

    def next(self) -> RankStep:
        if self._step >= self.plan.steps:
            raise StopIteration
        item = self.plan.rank_step(self.order, self.epoch, self._step, self.rank)
        self._step += 1
        return item

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step}


def _shutdown(loader: tn.Loader | None) -> None:
    """Stop the threads/processes of a chain now (torchdata otherwise waits for garbage collection).

    Innermost node first: an outer node's thread may be blocked pulling from an inner one, which
    only returns once the inner one is stopped.
    """
    chain = []
    node = loader.root if loader is not None else None
    while node is not None:
        chain.append(node)
        node = getattr(node, "source", None)
    for node in reversed(chain):
        inner = getattr(node, "_it", None)
        for it in (getattr(inner, "_it", None), inner):
            _stop_readers_first(it)
            stop = getattr(it, "_shutdown", None)
            if callable(stop):
                stop()


def _stop_readers_first(it: Any) -> None:
    """With process workers, stop the threads that unpickle results before the workers exit.

    A result's tensors travel as file descriptors served by the worker process; torchdata's own
    shutdown stops the workers and the reading thread together, so the thread can fail (loudly,
    in a daemon thread) unpickling a result of a worker that just exited.
    """
    if getattr(it, "method", None) != "process":
        return
    stop = getattr(it, "_stop", None)
    if isinstance(stop, threading.Event):
        stop.set()
        for name in ("_sort_thread", "_read_thread"):
            thread = getattr(it, name, None)
            if isinstance(thread, threading.Thread) and thread.is_alive():
                thread.join(timeout=2)


class ShardedPipeline:
    """One rank's data pipeline; ``Stateful`` (``state_dict``/``load_state_dict``) at the job level.

    Args:
        source: what to read (:mod:`torchrt.data.sources`, :class:`~torchrt.data.shards.ShardReader`).
        rank, world_size: this worker's place in the job.
        batch_size: samples per rank per step.
        shuffle, seed: the epoch order (identity when ``shuffle`` is false).
        tail: ``"drop_tail"`` or ``"pad"`` (see :mod:`torchrt.data.sampling`).
        workers: map workers (0: read and map in the caller's thread, no prefetching, like
            ``DataLoader(num_workers=0)``; measured faster on 2 busy cores than a prefetch thread).
        worker_mode: ``"threads"`` or ``"processes"``.
        prefetch: batches prefetched ahead of the caller (0: none).
        transform: batch-level function ``{field: tensor} -> {field: tensor}`` run in the workers.
        pin_memory: pin batches; ``None`` means "when CUDA is available".
        multiprocessing_context: ``"fork"``, ``"spawn"``, ``"forkserver"`` or None (torch's default).
        preview_interval: seconds between previews per rank (``None``/0: off).
        report_interval: seconds between ``data_progress``/``data_timing`` events.
        clock: injectable monotonic clock (previews and report windows).
        name: dataset name in states, events and errors (default: the source's).
    """

    def __init__(self, source: Source, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, seed: int = 0, tail: TailPolicy = "drop_tail", workers: int = 2,
                 worker_mode: WorkerMode = "threads", prefetch: int = 2, transform: Transform | None = None,
                 pin_memory: bool | None = None, multiprocessing_context: str | None = None,
                 preview_interval: float | None = 2.0, report_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, name: str | None = None) -> None:
        self.name = name or source.name
        self.source = source
        problems = []
        if not 0 <= rank < world_size:
            problems.append(f"rank {rank} is outside [0, world_size={world_size})")
        if batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {batch_size}")
        if workers < 0:
            problems.append(f"workers must be >= 0, got {workers}")
        if prefetch < 0:
            problems.append(f"prefetch must be >= 0, got {prefetch}")
        if worker_mode not in ("threads", "processes"):
            problems.append(f"worker_mode must be 'threads' or 'processes', got {worker_mode!r}")
        if tail not in TAIL_POLICIES:
            problems.append(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")
        if problems:
            raise DataConfigError("; ".join(problems), dataset=self.name, file=source.file)
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.shuffle, self.seed, self.tail = shuffle, seed, tail
        self.workers, self.worker_mode, self.prefetch = workers, worker_mode, prefetch
        self.transform = transform
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.multiprocessing_context = multiprocessing_context
        self.size = len(source)
        self._order = GlobalOrder(self.size, seed=seed, shuffle=shuffle)
        self._epoch = 0
        self._position = 0
        # A weak reference: the running generator refers to the pipeline, so a strong one back would
        # make a cycle, and an abandoned iteration's threads would live until the cyclic GC ran (in a
        # forked worker process, even).
        self._active: weakref.ref[Iterator[Batch]] | None = None
        self.events = DataEvents(self.name, rank, world_size, interval=report_interval, clock=clock)
        self.preview = PreviewTap(self.name, rank, interval=preview_interval, clock=clock)
        self._warned_empty = False
        self._described: dict[str, object] | None = None  # the assignment last reported (registered, resumed)

    def note_wait(self, seconds: float) -> None:
        """Count ``seconds`` the training loop spent waiting for this dataset's batch outside the
        pipeline (a staging step of its own, the late delivery of the demo's ``slow_rank`` fault): the
        dataset's ``data_timing`` and the step's data wait both include it."""
        if seconds < 0:
            raise DataConfigError(f"a wait cannot be negative, got {seconds}", dataset=self.name)
        self.events.waited(seconds)

    # ------------------------------------------------------------------ state
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Samples of the current epoch the whole job has consumed (the global position)."""
        return self._position

    def plan(self) -> EpochPlan:
        """How the rest of the current epoch is dealt at this pipeline's world size."""
        return EpochPlan(self.size, self.world_size, self.batch_size, self.tail, self._position)

    def __len__(self) -> int:
        """Batches the next ``iter()`` yields (the rest of the current epoch)."""
        return self.plan().steps

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch``; a no-op if it is the current epoch (keeps a resumed position)."""
        if epoch < 0:
            raise DataConfigError(f"epoch must be >= 0, got {epoch}", dataset=self.name)
        if epoch != self._epoch:
            self._close_active()
            self._epoch, self._position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """The job's data state: identical on every rank after the same step; resumable at any world size."""
        return {"format": STATE_FORMAT, "dataset": self.name, "size": self.size, "seed": self.seed,
                "shuffle": self.shuffle, "epoch": self._epoch, "position": self._position,
                "world_size": self.world_size, "batch_size": self.batch_size, "tail": self.tail}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (saved at any world size); takes effect at the next ``iter()``."""
        def mismatch(problem: str) -> DataStateMismatchError:
            return DataStateMismatchError(problem, dataset=self.name, file=self.source.file)

        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise mismatch(f"not a {STATE_FORMAT} state: "
                           f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
        for key in ("epoch", "position", "size", "seed"):
            if not isinstance(state.get(key), int) or isinstance(state.get(key), bool):
                raise mismatch(f"state field {key!r} must be an integer, got {state.get(key)!r}")
        for key, mine in (("dataset", self.name), ("size", self.size), ("seed", self.seed),
                          ("shuffle", self.shuffle)):
            if state.get(key) != mine:
                raise mismatch(f"the state was saved for {key}={state.get(key)!r}, this pipeline has {mine!r}; "
                               "resuming would not continue the same order")
        if state["epoch"] < 0 or not 0 <= state["position"] <= self.size:
            raise mismatch(f"state epoch {state['epoch']} / position {state['position']} out of range "
                           f"for {self.size} samples")
        self._close_active()
        self._epoch, self._position = state["epoch"], state["position"]
        self._described = self.plan().describe(self.rank)
        self.events.resumed(epoch=self._epoch, position=self._position, size=self.size,
                            saved_world_size=state.get("world_size"), saved_batch_size=state.get("batch_size"),
                            batch_size=self.batch_size, assignment=self._described)
        logger.info("dataset %r rank %d/%d: resuming epoch %d at global position %d (saved at world size %s)",
                    self.name, self.rank, self.world_size, self._epoch, self._position, state.get("world_size"))

    # -------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch. Dropping the iterator (or ``close()``) stops its workers."""
        self._close_active()
        iterator = self._iterate()
        self._active = weakref.ref(iterator)
        return iterator

    def _build(self, plan: EpochPlan, order: np.ndarray, epoch: int) -> tn.Loader:
        node: tn.BaseNode[Any] = _StepNode(plan, order, epoch, self.rank)
        reader = BatchReader(self.source, self.transform)
        if self.workers == 0:
            node = tn.Mapper(node, reader)
        else:
            node = tn.ParallelMapper(node, reader, num_workers=self.workers, in_order=True,
                                     method="thread" if self.worker_mode == "threads" else "process",
                                     multiprocessing_context=self.multiprocessing_context, snapshot_frequency=0)
        if self.prefetch > 0 and self.workers > 0:  # workers=0: all in the caller's thread, as DataLoader's
            node = tn.Prefetcher(node, prefetch_factor=self.prefetch, snapshot_frequency=0)
        if self.pin_memory:
            node = tn.PinMemory(node, snapshot_frequency=0)
        return tn.Loader(node, restart_on_stop_iteration=False)

    def _iterate(self) -> Iterator[Batch]:
        epoch, plan = self._epoch, self.plan()
        assignment = plan.describe(self.rank)
        if assignment != self._described:  # the last one said no longer fits (the epoch after a resumed one)
            self._described = assignment
            self.events.report(epoch=epoch, position=plan.start, size=self.size, step=0, steps=plan.steps,
                               done=False, assignment=assignment)
        if plan.steps == 0 and plan.start == 0 and not self._warned_empty:
            self._warned_empty = True
            logger.warning("dataset %r: %d samples do not fill one global step of %d x %d with tail=%r: "
                           "no batches", self.name, self.size, self.world_size, self.batch_size, self.tail)
        loader = self._build(plan, self._order.permutation(epoch), epoch)
        expected = 0
        finished = False
        try:
            it = iter(loader)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                wait = time.perf_counter() - t0
                if isinstance(item, _Failed):
                    logger.debug("dataset %r step %d failed in a worker:\n%s", self.name, item.step, item.where)
                    raise item.error
                if item.step != expected:  # torchdata's in_order guarantee; the position relies on it
                    raise RuntimeError(f"dataset {self.name!r}: step {item.step} arrived, expected {expected}")
                expected += 1
                self._position = plan.position_after(item.step)
                self.events.step(epoch=epoch, position=self._position, size=self.size, step=expected,
                                 steps=plan.steps, real=item.real, padded=self.batch_size - item.real,
                                 read_s=item.read_s, map_s=item.map_s, wait_s=wait)
                self.preview.offer(item.batch, epoch)
                yield item.batch
            self.events.report(epoch=epoch, position=plan.end, size=self.size, step=expected, steps=plan.steps,
                               done=True)
            self._epoch, self._position = epoch + 1, 0
            finished = True
        finally:
            _shutdown(loader)
            if not finished and self.events.pending:  # stopped mid-epoch: report where it stopped
                self.events.report(epoch=epoch, position=self._position, size=self.size, step=expected,
                                   steps=plan.steps, done=False)

    def _close_active(self) -> None:
        ref, self._active = self._active, None
        active = ref() if ref is not None else None
        if active is not None:
            active.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop any running iteration's workers and the preview thread."""
        self._close_active()
        self.preview.close()

    def __enter__(self) -> ShardedPipeline:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # --------------------------------------------------------------- registry
    def describe(self) -> dict[str, Any]:
        """The ``dataset_registered`` fields for this rank."""
        facts = self.source.describe()
        return {**facts, "batch_size": self.batch_size, "tail": self.tail, "shuffle": self.shuffle,
                "seed": self.seed, "workers": self.workers, "worker_mode": self.worker_mode,
                "prefetch": self.prefetch, "epoch": self._epoch, "position": self._position,
                "assignment": self.plan().describe(self.rank)}

    def announce(self) -> None:
        """Emit ``dataset_registered`` for this rank (``build_pipeline`` does it for you)."""
        described = self.describe()
        self._described = described["assignment"]
        self.events.registered(**described)
