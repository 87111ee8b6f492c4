"""The checkpoint fold's steps in flight, as real runs order their events."""

from __future__ import annotations

from torchrt.checkpoint.fold import CheckpointFold
from torchrt.contract import EventType


def _saved(step: int, rank: int) -> dict:
    return {"type": EventType.CHECKPOINT_SAVED, "ts": 1.0, "step": step, "rank": rank, "world_size": 2, "bytes": 10}


def _committed(step: int) -> dict:
    return {"type": EventType.CHECKPOINT_COMMITTED, "ts": 2.0, "step": step, "rank": 0, "world_size": 2, "bytes": 20}


def test_a_rank_saved_report_arriving_after_the_commit_does_not_reopen_the_step():
    fold = CheckpointFold()
    fold.apply(_saved(10, 0))
    fold.apply(_committed(10))  # rank 0 committed once every shard was durable ...
    fold.apply(_saved(10, 1))   # ... and rank 1's own report of its shard came in after that
    assert fold.snapshot()["saving"] == []
    assert fold.snapshot()["latest_step"] == 10


def test_a_step_saved_again_after_a_restore_is_in_flight_again():
    fold = CheckpointFold()
    fold.apply(_saved(20, 0))
    fold.apply(_committed(20))
    fold.apply({"type": EventType.CHECKPOINT_RESTORED, "ts": 3.0, "step": 10, "rank": 0})  # the job went back
    fold.apply(_saved(20, 0))
    assert [s["step"] for s in fold.snapshot()["saving"]] == [20]
