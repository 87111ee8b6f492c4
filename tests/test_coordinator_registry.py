"""The coordinator folds workers' data telemetry into its state; previews stay out of the log."""

from __future__ import annotations

import threading

from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig

from tests.helpers import events


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
    worker = CoordinatorClient(coordinator.endpoint, role="worker", run_id="job",
                               hello={"info": {"rank": 1, "node_id": "n0"}})
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
        state = watcher.request("status")["state"]
        record = state["datasets"]["digits"]
        assert record["size"] == 1797 and record["position"] == 640
        assert record["ranks"]["1"]["samples"] == {"0": 320}
        assert record["preview"]["1"]["index"] == 17
    finally:
        worker.close()
        watcher.close()
        coordinator.stop()
    logged = [e["type"] for e in events(tmp_path)]
    assert "dataset_registered" in logged and "data_progress" in logged
    assert "data_preview" not in logged


def test_checkpoint_history_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path, port=0, run_id="job"))
    coordinator.start()
    worker = CoordinatorClient(coordinator.endpoint, role="worker", run_id="job", hello={"info": {"rank": 0}})
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
