"""The checkpoint layer's part of the job view: its events folded into the job's checkpoint history.

:class:`CheckpointFold` takes the checkpoint events (docs/checkpoint.md) as the
coordinator records them: the steps being saved (ranks whose shard is durable,
bytes so far, until the step commits or fails), the committed checkpoints (the
last ``keep``, newest last), failures and skips, restores.

A save is in flight until it is settled, and the record does not always say so
step by step. Commits come in step order (a manager saves one step at a time), so
a commit or failure of step C settles every step up to C. A restore (the job
went back to a durable step R, in a new generation) ends every save of the old
generation: a node that died mid-save never reports the rest, and its own commit
may be lost with its worker (the demo's stopped node: step 200 shown in flight
with 2 of 4 ranks forever, restored from a minute later). After either, a shard's
report of a step up to that floor is late, not a new save.

The last durable step (``durable_step``) is the newest step the record shows on disk: the last
commit's, or a newer step a restore read (``durable_by``: ``commit`` or ``restore``). That dead
node's step 200 was durable though no commit of it was logged; the restore of it is the proof.

Each rank reports its own restore; the job's restores (``restores_total``,
``last_restore``) count the ranks that restored the same step together once. A
rank that restores again, or another step, starts the next one. ``snapshot()`` is
bounded at any number of ranks: per-rank figures of a commit are summarised
(count, slowest stall and write), the long lists are pages (``rows``).
``samples`` gives the series the view keeps: commit time and throughput, and
every rank's stall, write time and throughput, aggregated over the ranks that
saved in the same second (so min/max show the spread between ranks).

It imports nothing heavy (this package's ``__init__`` is lazy), so the
coordinator and a replaying monitor load it without the writers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from torchrt.contract import EventType

__all__ = ["CheckpointFold"]

Event = dict[str, Any]
SHOWN = 5          # committed checkpoints, problems and restores in the snapshot
KEEP_SAVING = 4    # steps in flight tracked at once (older ones are dropped from the list)
_SERIES = {
    EventType.CHECKPOINT_COMMITTED: ("total_s", "commit_s", "mb_s", "bytes"),
    EventType.CHECKPOINT_SAVED: ("stall_s", "write_s", "mb_s"),
    EventType.CHECKPOINT_RESTORED: ("read_s", "mb_s"),
}


class CheckpointFold:
    """The job's checkpoints as the record tells them (see the module docstring)."""

    name = "checkpoints"
    types = frozenset({EventType.CHECKPOINT_SAVED, EventType.CHECKPOINT_COMMITTED, EventType.CHECKPOINT_FAILED,
                       EventType.CHECKPOINT_SKIPPED, EventType.CHECKPOINT_RESTORED})
    row_kinds = ("committed", "problems", "restored")

    def __init__(self, keep: int = 50) -> None:
        self.committed: deque[Event] = deque(maxlen=keep)
        self.problems: deque[Event] = deque(maxlen=keep)
        self.restored: deque[Event] = deque(maxlen=keep)
        self.committed_total = 0
        self.problems_total = 0
        self.restored_ranks_total = 0  # restored events, one per rank
        self.restores_total = 0        # the job's restores: the ranks restoring one step together
        self._restore: dict[str, Any] | None = None  # the latest: {"step", "ranks": set, "first_at"}
        self._durable: tuple[int, str] | None = None  # (the newest step shown durable, "commit" or "restore")
        self.saving: dict[int, dict[str, Any]] = {}
        # the highest step settled (committed, failed, restored) since the last restore: a shard's report
        # of a step up to it (rank 0 committed as soon as every shard was durable) is not a new save
        self._floor: int | None = None

    def apply(self, event: Event) -> bool:
        kind = event.get("type")
        fields = {k: v for k, v in event.items() if k != "type"}
        step = event.get("step")
        if kind == EventType.CHECKPOINT_SAVED:
            if not isinstance(step, int):
                return False
            self._saved(step, event)
        elif kind == EventType.CHECKPOINT_COMMITTED:
            self.committed.append(fields)
            self.committed_total += 1
            self._settle(step)
            self._shown_durable(step, "commit")
        elif kind in (EventType.CHECKPOINT_FAILED, EventType.CHECKPOINT_SKIPPED):
            self.problems.append({"kind": kind.removeprefix("checkpoint_"), **fields})
            self.problems_total += 1
            if kind == EventType.CHECKPOINT_FAILED:
                self._settle(step)
        elif kind == EventType.CHECKPOINT_RESTORED:
            self.restored.append(fields)
            self._restored(step, event)
        else:
            return False
        return True

    def _settle(self, step: Any) -> None:
        if not isinstance(step, int):
            return
        for done in [s for s in self.saving if s <= step]:
            del self.saving[done]
        self._floor = step if self._floor is None else max(self._floor, step)

    def _restored(self, step: Any, event: Event) -> None:
        """A rank restored ``step``: counted (see the module docstring), and the job went back to it."""
        self.restored_ranks_total += 1
        rank, current = event.get("rank"), self._restore
        rank = rank if isinstance(rank, int) else None  # a malformed rank is no rank, not a failure of the fold
        if current is None or current["step"] != step or rank in current["ranks"]:
            self.restores_total += 1
            current = self._restore = {"step": step, "ranks": set(), "first_at": event.get("ts")}
        current["ranks"].add(rank)
        self.saving.clear()  # the old generation's saves end here; the steps after this one are saved anew
        self._floor = step if isinstance(step, int) else None
        self._shown_durable(step, "restore")

    def _shown_durable(self, step: Any, by: str) -> None:
        """``step`` is on disk (``by`` a commit, or a restore that read it): the newest such step
        is the last durable one; a commit of that same step is the better proof."""
        if not isinstance(step, int) or isinstance(step, bool):
            return
        durable = self._durable
        if durable is None or step > durable[0] or (step == durable[0] and by == "commit"):
            self._durable = (step, by)

    def _saved(self, step: int, event: Event) -> None:
        if self._floor is not None and step <= self._floor:
            return
        entry = self.saving.get(step)
        if entry is None:
            entry = self.saving[step] = {"step": step, "ranks": 0, "bytes": 0, "world_size": event.get("world_size"),
                                         "first_at": event.get("ts")}
            while len(self.saving) > KEEP_SAVING:
                del self.saving[min(self.saving)]
        entry["ranks"] += 1
        size = event.get("bytes")
        if isinstance(size, int):
            entry["bytes"] += size
        entry["last_at"] = event.get("ts")

    def samples(self, event: Event) -> Iterable[tuple[str, str, float]]:
        """``(subject, measure, value)``: subject ``committed``, ``saved`` or ``restored``."""
        keys = _SERIES.get(event.get("type"))  # type: ignore[arg-type]
        if keys is None:
            return ()
        subject = str(event["type"]).removeprefix("checkpoint_")
        return [(subject, key, float(event[key])) for key in keys
                if isinstance(event.get(key), (int, float)) and not isinstance(event.get(key), bool)]

    def view(self) -> dict[str, Any]:
        """Everything kept, unsummarised (the coordinator's state.json until it serves the view)."""
        latest = self.committed[-1] if self.committed else None
        return {"latest_step": latest["step"] if latest else None, "committed": list(self.committed),
                "problems": list(self.problems), "restored": list(self.restored)}

    def snapshot(self) -> dict[str, Any]:
        latest = self.committed[-1] if self.committed else None
        restore = self._restore
        last_restore = None if restore is None else \
            {"step": restore["step"], "ranks": len(restore["ranks"]), "first_at": restore["first_at"]}
        durable = self._durable
        return {"latest_step": latest.get("step") if latest else None,
                "durable_step": durable[0] if durable else None, "durable_by": durable[1] if durable else None,
                "committed_total": self.committed_total,
                "problems_total": self.problems_total, "restores_total": self.restores_total,
                "restored_ranks_total": self.restored_ranks_total, "last_restore": last_restore,
                "saving": [dict(s) for s in self.saving.values()],
                "committed": [_summary(c) for c in list(self.committed)[-SHOWN:]],
                "problems": list(self.problems)[-SHOWN:], "restored": list(self.restored)[-SHOWN:]}

    def rows(self, kind: str) -> Sequence[Event]:
        return list({"committed": self.committed, "problems": self.problems, "restored": self.restored}[kind])


def _summary(committed: Event) -> Event:
    """A committed checkpoint with its per-rank figures summarised."""
    ranks = committed.get("ranks")
    out = {k: v for k, v in committed.items() if k != "ranks"}
    if isinstance(ranks, list):
        rows = [r for r in ranks if isinstance(r, dict)]
        out["ranks"] = {"count": len(ranks), **{
            f"max_{key}": max((r[key] for r in rows if isinstance(r.get(key), (int, float))), default=None)
            for key in ("stall_s", "write_s")}}
    return out
