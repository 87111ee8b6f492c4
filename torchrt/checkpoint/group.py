"""How the ranks of a job talk about checkpoints: reports, commit results, decisions.

Design
------
Everything goes through the job's c10d store (under ``torchrt.init()`` the
coordinator's store, so ranks report their shards through the coordinator;
otherwise the default process group's), never through collectives on the training process group, so the
background threads that report and commit never block or reorder the
training loop's own collectives. Keys live under
``torchrt/ckpt/<nonce>/``, where ``<nonce>`` is drawn by rank 0 when the
manager is created and broadcast once (the only collective, at construction),
so managers of earlier incarnations or other tests sharing a store never see
each other's keys.

* ``s<step>/r<rank>``: rank ``r``'s report for a step (its JSON record: the
  files it made durable with sizes and CRC-32s, or the error it hit: a failed
  rank reports too); rank 0's committer waits for all of them
  (``TCPStore.wait``, answered by the server as soon as the keys appear), then
  deletes them. A rank that *died* cannot report: under torchrt the
  coordinator sets ``worker_gone_key`` (:mod:`torchrt.contract`) when a
  worker's connection to it closes, and the waits here look for it once a
  second, so rank 0 fails the commit with :class:`RankGoneError` within about
  a second instead of waiting ``commit_timeout`` (the other ranks likewise
  when rank 0 is gone). Under plain torchrun only the timeout remains.
* ``s<step>/result``: the commit outcome, which the other ranks wait for.
* ``s<step>/decision``: with ``when_busy="skip"``, the first rank to reach a
  save decides (``compare_set``) whether the job saves or skips that step, so
  all ranks agree.
* ``trigger/<k>/r<rank>``: time-based saves across ranks; rank 0 announces
  the step at which the ``k``-th one happens, one key per rank, so that a
  rank closing its manager can release its own waiting thread by setting its
  key (a thread left blocked in a store call when the store goes away
  aborts the process at exit).

Each thread uses its own store connection (a ``clone``), since a blocking
``wait`` holds a connection. :class:`LocalGroup` is the single-process case.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from torchrt import distributed
from torchrt.checkpoint.errors import CheckpointError
from torchrt.contract import worker_gone_key

logger = logging.getLogger(__name__)

__all__ = ["CheckpointGroup", "CommitTimeoutError", "LocalGroup", "RankGoneError", "StoreGroup", "default_group"]


class CommitTimeoutError(CheckpointError):
    """Rank 0 did not hear from every rank in time."""


class RankGoneError(CheckpointError):
    """A rank that was waited for is gone (its process exited or died) before it answered."""


LIVENESS_POLL_S = 1.0


class CheckpointGroup(abc.ABC):
    rank: int
    world_size: int

    @abc.abstractmethod
    def report(self, step: int, record: dict) -> None:
        """A non-zero rank's report for ``step`` (rank 0 hands its own to :meth:`gather`)."""

    @abc.abstractmethod
    def gather(self, step: int, own: dict, timeout: float) -> list[dict]:
        """Rank 0: every rank's record for ``step``, in rank order."""

    @abc.abstractmethod
    def publish_result(self, step: int, result: dict) -> None: ...

    @abc.abstractmethod
    def wait_result(self, step: int, timeout: float) -> dict: ...

    @abc.abstractmethod
    def decide(self, step: int, proposal: str) -> str:
        """The job's decision for ``step``: the first rank's proposal wins."""

    @abc.abstractmethod
    def post_trigger(self, seq: int, step: int) -> None: ...

    @abc.abstractmethod
    def wait_trigger(self, seq: int, timeout: float) -> int | None:
        """The step of time-based save ``seq``; ``None`` once :meth:`wake_trigger` was called."""

    def wake_trigger(self, seq: int) -> None:
        """Release this rank's own :meth:`wait_trigger` (at close: no thread is left blocked in the store)."""

    @abc.abstractmethod
    def all_gather_object(self, obj: Any) -> list[Any]:
        """A collective on the training process group: call from the main thread only."""

    def close(self) -> None:
        return None


class LocalGroup(CheckpointGroup):
    """One process: nothing to exchange."""

    rank = 0
    world_size = 1

    def report(self, step: int, record: dict) -> None:
        return None

    def gather(self, step: int, own: dict, timeout: float) -> list[dict]:
        return [own]

    def publish_result(self, step: int, result: dict) -> None:
        return None

    def wait_result(self, step: int, timeout: float) -> dict:
        raise CheckpointError("a single process has no commit results to wait for")

    def decide(self, step: int, proposal: str) -> str:
        return proposal

    def post_trigger(self, seq: int, step: int) -> None:
        return None

    def wait_trigger(self, seq: int, timeout: float) -> int | None:
        return None

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]


def _shared_store() -> dist.Store:
    """The coordinator's store when torchrt.init() ran under torchrt (ranks then report their
    shards through the coordinator), else the default process group's."""
    if distributed.is_initialized():
        return distributed.job_store()
    return dist.distributed_c10d._get_default_store()


class StoreGroup(CheckpointGroup):
    """Ranks of a process group, talking through a c10d store (see the module docstring)."""

    def __init__(self, store: dist.Store, namespace: str, rank: int, world_size: int,
                 process_group: Any = None, gone_key: Callable[[int], str] | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.namespace = namespace
        self._base = distributed.underlying_store(store)
        self._pg = process_group
        self._gone_key = gone_key  # group rank -> the coordinator's "worker gone" key
        self._local = threading.local()
        self._conns: list[dist.Store] = []
        self._lock = threading.Lock()

    @classmethod
    def from_process_group(cls, process_group: Any = None) -> StoreGroup:
        """Collective over ``process_group`` (default: the default group); see the module docstring."""
        rank = dist.get_rank(process_group)
        world = dist.get_world_size(process_group)
        box = [os.urandom(8).hex() if rank == 0 else None]
        dist.broadcast_object_list(box, src=dist.get_global_rank(process_group, 0)
                                   if process_group is not None else 0, group=process_group)
        return cls(_shared_store(), f"torchrt/ckpt/{box[0]}/", rank, world, process_group,
                   _gone_keys(process_group))

    def _conn(self) -> dist.Store:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                base = self._base.clone()
            except Exception as e:  # not a TCPStore: share it (HashStore and FileStore are thread-safe)
                logger.debug("checkpoint: store does not clone (%s); sharing one connection", e)
                base = self._base
            conn = dist.PrefixStore(self.namespace, base)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def report(self, step: int, record: dict) -> None:
        self._conn().set(f"s{step}/r{self.rank}", json.dumps(record))

    def gather(self, step: int, own: dict, timeout: float) -> list[dict]:
        if not own.get("ok", False):
            return [own]  # no point waiting: this step cannot commit
        conn = self._conn()
        ranks = list(range(1, self.world_size))
        keys = [f"s{step}/r{r}" for r in ranks]
        self._wait(conn, dict(zip(ranks, keys)), timeout, f"step {step}: no report from rank(s)")
        values = conn.multi_get(keys) if keys else []
        for k in keys:
            conn.delete_key(k)
        return [own] + [json.loads(v) for v in values]

    def publish_result(self, step: int, result: dict) -> None:
        self._conn().set(f"s{step}/result", json.dumps(result))

    def wait_result(self, step: int, timeout: float) -> dict:
        conn = self._conn()
        self._wait(conn, {0: f"s{step}/result"}, timeout, f"step {step}: no commit outcome from rank")
        return json.loads(conn.get(f"s{step}/result"))

    def _wait(self, conn: dist.PrefixStore, keys: dict[int, str], timeout: float, what: str) -> None:
        """Wait until every rank's key is set; fail as soon as one of those ranks is gone."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            poll = min(left, LIVENESS_POLL_S) if self._gone_key is not None else left
            try:
                conn.wait(list(keys.values()), timedelta(seconds=max(poll, 0.001)))
                return
            except dist.DistStoreError:
                missing = [r for r, k in keys.items() if not conn.check([k])]
            if not missing:
                return
            if self._gone_key is not None:
                gone = [r for r in missing if conn.underlying_store.check([self._gone_key(r)])]
                if gone:
                    raise RankGoneError(f"{what} {gone}: the process is gone (its worker disconnected from the "
                                        "coordinator) before it answered")
            if time.monotonic() >= deadline:
                raise CommitTimeoutError(f"{what} {missing} after {timeout:.0f} s")

    def decide(self, step: int, proposal: str) -> str:
        value = self._conn().compare_set(f"s{step}/decision", "", proposal)
        return value.decode() if isinstance(value, bytes) else str(value)

    def post_trigger(self, seq: int, step: int) -> None:
        keys = [f"trigger/{seq}/r{r}" for r in range(self.world_size)]
        self._conn().multi_set(keys, [str(step)] * len(keys))

    def wait_trigger(self, seq: int, timeout: float) -> int | None:
        key = f"trigger/{seq}/r{self.rank}"
        conn = self._conn()
        conn.wait([key], timedelta(seconds=timeout))
        value = conn.get(key).decode()
        return None if value == "closed" else int(value)

    def wake_trigger(self, seq: int) -> None:
        self._conn().set(f"trigger/{seq}/r{self.rank}", "closed")

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._pg)
        return out


def _gone_keys(process_group: Any) -> Callable[[int], str] | None:
    """Group rank -> the key the coordinator sets when that rank's worker is gone (under torchrt)."""
    ctx = distributed.current() if distributed.is_initialized() else None
    if ctx is None or ctx.store is None or ctx.run_id is None or ctx.round is None:
        return None
    run_id, round_number = ctx.run_id, ctx.round

    def key(group_rank: int) -> str:
        rank = dist.get_global_rank(process_group, group_rank) if process_group is not None else group_rank
        return worker_gone_key(run_id, round_number, rank)

    return key


def default_group() -> CheckpointGroup:
    """The default process group's ranks if one is initialised with more than one rank, else local."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return StoreGroup.from_process_group()
    return LocalGroup()
