"""monitor/sentences.py: the one sentence an event says, on the timeline and in the Logs."""

from __future__ import annotations

from monitor.api import TIMELINE
from monitor.sentences import MAX_CHARS, SENTENCES, presented, sentence
from torchrt.contract import EVENTS, EventType


def test_a_sentence_reads_the_events_fields_by_name_rounded_and_a_missing_one_as_a_question_mark():
    event = {"type": EventType.CHECKPOINT_COMMITTED.value, "seq": 3, "ts": 1.0, "step": 40, "mb_s": 27.123456}
    assert sentence(event) == "checkpoint of step 40 committed (27.12 MB/s)"  # four significant figures
    assert sentence({**event, "mb_s": 0.0213}) == "checkpoint of step 40 committed (0.0213 MB/s)"
    assert sentence({**event, "mb_s": 14360.2}) == "checkpoint of step 40 committed (14360 MB/s)"  # no exponent
    assert sentence({"type": EventType.WORKER_STOPPED.value, "rank": 2}) == "rank 2 stopped: ?"
    assert sentence({"type": EventType.ERROR.value, "where": "tick", "error": "x" * 1000}) == \
        ("coordinator error in tick: " + "x" * 1000)[:MAX_CHARS]


def test_a_type_without_a_template_has_no_sentence_and_is_presented_with_its_level_alone():
    report = {"type": EventType.STEP.value, "seq": 9, "step": 5}  # live only: never in the Logs
    assert sentence(report) is None and sentence({"type": "not-a-type"}) is None
    assert presented(report) == {**report, "level": "info"}
    dead = {"type": EventType.NODE_DEAD.value, "node": "n1", "reason": "no heartbeat for 2.5s"}
    assert presented(dead) == {**dead, "level": "error", "what": "node n1 dead: no heartbeat for 2.5s"}


def test_every_timeline_event_has_a_sentence():
    assert set(TIMELINE) <= set(SENTENCES)


def test_every_logged_event_has_a_sentence():
    # The Logs showed step_progress, data_progress and data_timing, most of a live job's rows, as key=value.
    assert {t for t, spec in EVENTS.items() if spec.logged} <= set(SENTENCES)
    report = {"type": EventType.STEP_PROGRESS.value, "rank": 1, "step": 343, "step_ms": 478.5, "samples_per_s": 11.83}
    assert sentence(report) == "rank 1 at step 343: 478.5 ms a step, 11.83 samples/s"


def test_a_straggler_reads_as_its_measure_beside_the_others():
    # It read "x4349.2 the others' step time" for a rank whose data wait, not its step, stood out.
    alert = {"type": EventType.RANK_STRAGGLING.value, "rank": 2, "measure": "data_wait_ms", "ratio": 4349.2,
             "value_ms": 133.4, "median_ms": 0.0307}
    assert sentence(alert) == "rank 2 straggling: data_wait_ms 133.4 ms, the others' 0.0307 ms (x4349)"
