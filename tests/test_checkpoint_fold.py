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


def _restored(step: int, rank: int) -> dict:
    return {"type": EventType.CHECKPOINT_RESTORED, "ts": 3.0, "step": step, "rank": rank}


def test_a_save_a_dead_node_left_unfinished_ends_with_the_restore_of_the_next_generation():
    # The demo's stopped node: ranks 2 and 3 reported step 200, ranks 0 and 1 (and rank 0's commit) never
    # did; the job restored step 200 and went on. Step 200 stayed "in flight, 2 of 4 ranks" for good.
    fold = CheckpointFold()
    for rank in (2, 3):
        fold.apply(_saved(200, rank))
    assert [s["step"] for s in fold.snapshot()["saving"]] == [200]
    for rank in range(4):
        fold.apply(_restored(200, rank))
    assert fold.snapshot()["saving"] == []
    fold.apply(_saved(200, 0))  # a late report of the old generation's save
    assert fold.snapshot()["saving"] == []
    fold.apply(_saved(210, 1))  # the new generation's first save
    assert [(s["step"], s["ranks"]) for s in fold.snapshot()["saving"]] == [(210, 1)]


def test_a_commit_settles_every_earlier_step_still_in_flight():
    fold = CheckpointFold()
    fold.apply(_saved(10, 1))  # step 10's other shard and its commit were never reported
    fold.apply(_saved(20, 0))
    fold.apply(_saved(20, 1))
    fold.apply(_committed(20))
    assert fold.snapshot()["saving"] == []
    fold.apply(_saved(10, 0))  # later than the commit of a later step: not a save in flight
    assert fold.snapshot()["saving"] == []
    fold.apply({"type": EventType.CHECKPOINT_FAILED, "ts": 4.0, "step": 30, "rank": 0, "error": "disk full"})
    fold.apply(_saved(30, 1))
    assert fold.snapshot()["saving"] == [] and fold.snapshot()["problems_total"] == 1


def test_the_ranks_restoring_one_step_are_one_restore_of_the_job():
    # The Checkpoints page said "Restores 5" after two restarts of four ranks: it counted the five
    # per-rank rows the snapshot shows.
    fold = CheckpointFold()
    for step in (100, 200):
        for rank in (1, 0, 3, 2):
            fold.apply(_restored(step, rank))
    fold.apply(_restored(200, 0))  # rank 0 alone, again (its worker restarted once more): a third restore
    snapshot = fold.snapshot()
    assert (snapshot["restores_total"], snapshot["restored_ranks_total"]) == (3, 9)
    assert snapshot["last_restore"] == {"step": 200, "ranks": 1, "first_at": 3.0}
    assert len(fold.rows("restored")) == 9 and len(snapshot["restored"]) == 5  # the rows page; the snapshot shows 5
    assert CheckpointFold().snapshot()["last_restore"] is None


def test_a_restore_report_with_a_malformed_rank_is_still_one_restore():
    fold = CheckpointFold()
    fold.apply({**_restored(10, 0), "rank": {"not": "a rank"}})  # raised TypeError (unhashable) in the fold
    assert (fold.snapshot()["restores_total"], fold.snapshot()["last_restore"]["ranks"]) == (1, 1)


def test_the_last_durable_step_is_the_newest_committed_or_restored():
    # The demo's stopped node took rank 0's commit of step 200 with it; the next generation restored 200.
    fold = CheckpointFold()
    fold.apply(_committed(180))
    fold.apply(_saved(200, 1))
    durable = lambda: (fold.snapshot()["latest_step"], fold.snapshot()["durable_step"], fold.snapshot()["durable_by"])
    assert durable() == (180, 180, "commit")
    for rank in range(2):
        fold.apply(_restored(200, rank))
    assert durable() == (180, 200, "restore")  # the restore read it back: it was durable
    fold.apply(_committed(200))  # a late commit of the same step: the better proof
    assert durable() == (200, 200, "commit")
    fold.apply(_committed(220))
    fold.apply(_restored(200, 0))  # a fallback to an older step does not make 220 less durable
    assert durable() == (220, 220, "commit")
    fold.apply({"type": EventType.CHECKPOINT_RESTORED, "step": "x", "rank": 0})  # malformed: no step shown
    assert durable() == (220, 220, "commit")
    assert CheckpointFold().snapshot()["durable_step"] is None
