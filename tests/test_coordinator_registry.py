"""The coordinator folds workers' data telemetry into its state; previews stay out of the log."""

from __future__ import annotations

import threading

from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig

from tests.helpers import events, form_round, node_client


def test_dataset_registry_in_state_and_previews_pushed_not_logged(tmp_path):
    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path, port=0, run_id="job"))
    coordinator.start()
    previews: list[dict] = []
    got_preview = threading.Event()

    def on_push(message):
        if message.get("push") == "preview":
            previews.append(message["event"])
            got_preview.set()

    watcher = CoordinatorClient(coordinator.endpoint, role="observer", on_push=on_push)
    node = node_client(coordinator.endpoint, "n0")  # workers report for the round they were started for
    worker = CoordinatorClient(coordinator.endpoint, role="worker", run_id="job",
                               hello={"info": {"rank": 1, "node_id": "n0", "round": form_round(node)}})
    try:
        watcher.connect(timeout=5)
        watcher.request("subscribe", since=0)
        worker.connect(timeout=5)
        common = {"dataset": "digits", "rank": 1, "world_size": 2, "session": "s1"}
        worker.request("telemetry", events=[
            {"type": "dataset_registered", **common, "kind": "digits", "size": 1797, "batch_size": 32,
             "epoch": 0, "position": 0, "assignment": {"rule": "slice"}},
            {"type": "data_progress", **common, "epoch": 0, "position": 640, "samples": 320, "done": False},
            {"type": "data_preview", "dataset": "digits", "rank": 1, "epoch": 0, "index": 17, "label": 3,
             "png_b64": "iVBORw0KGgo="},
        ])
        assert got_preview.wait(5)
        assert previews[0]["index"] == 17 and previews[0]["node_id"] == "n0"
        status = watcher.request("status", pages=[{"part": "datasets", "kind": "ranks"}])
        record = status["state"]["datasets"]["digits"]  # the view's summary; per-rank detail is a page
        assert record["size"] == 1797 and record["position"] == 640 and record["samples_in_epoch"] == 320
        [row] = status["pages"]["datasets/ranks"]["items"]
        assert row["rank"] == 1 and row["samples"] == {"0": 320}
        previews_kept = coordinator.read_view(lambda view: view.part("datasets").view["digits"]["preview"])
        assert previews_kept[1]["index"] == 17  # live only: in the view, not in the record
    finally:
        worker.close()
        watcher.close()
        node.close()
        coordinator.stop()
    logged = [e["type"] for e in events(tmp_path)]
    assert "dataset_registered" in logged and "data_progress" in logged
    assert "data_preview" not in logged


def test_checkpoint_history_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path, port=0, run_id="job"))
    coordinator.start()
    node = node_client(coordinator.endpoint, "n0")
    worker = CoordinatorClient(coordinator.endpoint, role="worker", run_id="job",
                               hello={"info": {"rank": 0, "node_id": "n0", "round": form_round(node)}})
    try:
        worker.connect(timeout=5)
        worker.request("telemetry", events=[
            {"type": "checkpoint_saved", "step": 10, "rank": 0, "stall_s": 0.003, "write_s": 0.5, "mb_s": 900.0},
            {"type": "checkpoint_committed", "step": 10, "rank": 0, "total_s": 0.7, "mb_s": 800.0, "bytes": 5},
            {"type": "checkpoint_failed", "step": 20, "rank": 1, "stage": "write", "error": "ENOSPC"},
            {"type": "metric", "name": "train/loss", "value": 0.25, "step": 3},
        ])
    finally:
        worker.close()
        node.close()
    observer = CoordinatorClient(coordinator.endpoint, role="observer")
    observer.connect(timeout=5)
    state = observer.request("status")["state"]
    observer.close()
    coordinator.stop()  # flushes TensorBoard
    assert state["checkpoints"]["latest_step"] == 10
    assert state["checkpoints"]["problems"][0]["kind"] == "failed"
    assert "metric" not in [e["type"] for e in events(tmp_path)]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "checkpoint/total_s", "checkpoint/stall_s/rank0"} <= tags
    assert [(s.step, s.value) for s in acc.Scalars("train/loss")] == [(3, 0.25)]


def test_barrier_scalar_is_stepped_by_the_barrier_call_not_the_log_sequence():
    """The event log stamps its own ``seq`` on every event; a barrier's call number must not share
    that name, or the TensorBoard step would be the log's position instead of the call."""
    from torchrt.contract import EventType
    from torchrt.coordinator.records import scalars_of

    logged = {"seq": 5012, "ts": 1.0, "type": EventType.BARRIER, "name": "epoch-end", "call": 3,
              "world_size": 2, "completions": 1, "latency_us": 80.0, "p50_us": 70.0, "max_us": 80.0}
    assert scalars_of(logged) == [("barrier/epoch-end/p50_us", 70.0, 3)]
