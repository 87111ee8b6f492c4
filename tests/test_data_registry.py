"""Declarations (DataSpec, the config's data section, the registry) and the telemetry the coordinator folds."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import ManualClock
from torchrt.contract import EventType
from torchrt.data import events as ev
from torchrt.data.errors import DataConfigError, DataNotFoundError
from torchrt.data.registry import DatasetRegistry, build_pipeline, open_source
from torchrt.data.spec import DataSpec, parse_data_section


class Squares(torch.utils.data.Dataset):
    def __init__(self, n: int = 10) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i * i)]), i % 2


def make_squares(n: int) -> Squares:
    return Squares(n)


def test_spec_validation_names_dataset_and_field():
    with pytest.raises(DataConfigError, match=r"dataset 'd': batch_size: expected an integer >= 1, got 0"):
        DataSpec(name="d", kind="digits", batch_size=0)
    with pytest.raises(DataConfigError, match="kind: expected one of map, shards, digits, synthetic"):
        DataSpec(name="d", kind="csv")  # type: ignore[arg-type]
    with pytest.raises(DataConfigError, match="options.sise: unknown option for kind 'synthetic'"):
        DataSpec(name="d", kind="synthetic", options={"size": 3, "sise": 4})
    with pytest.raises(DataConfigError, match="options.size"):
        DataSpec(name="d", kind="synthetic")
    with pytest.raises(DataConfigError, match="path: a 'shards' dataset needs"):
        DataSpec(name="d", kind="shards")
    with pytest.raises(DataConfigError, match="worker_mode"):
        DataSpec(name="d", kind="digits", worker_mode="fibers")  # type: ignore[arg-type]


def test_data_section_from_config():
    specs = parse_data_section([
        {"name": "digits", "kind": "digits", "batch_size": 64, "drop_last": False, "workers": None},
        {"name": "synth", "kind": "synthetic", "options": {"size": 1000, "shape": [3, 32, 32]},
         "worker_mode": "processes", "preview_interval": 0},
    ])
    assert [s.name for s in specs] == ["digits", "synth"]
    assert specs[0].tail == "pad" and specs[0].workers == 2  # null takes the default
    assert specs[1].options["shape"] == [3, 32, 32] and specs[1].preview_interval == 0
    by_name = parse_data_section({"digits": {"kind": "digits"}})
    assert by_name[0].name == "digits"
    with pytest.raises(DataConfigError, match="dataset 'x': batchsize: unknown key"):
        parse_data_section([{"name": "x", "kind": "digits", "batchsize": 3}])
    with pytest.raises(DataConfigError, match="dataset 'x': declared twice"):
        parse_data_section([{"name": "x", "kind": "digits"}, {"name": "x", "kind": "digits"}])
    with pytest.raises(DataConfigError, match="kind: required"):
        parse_data_section({"x": {}})


def test_registry_declares_by_name(tmp_path):
    reg = DatasetRegistry()
    reg.load([{"name": "digits", "kind": "digits"}])
    spec = reg.register(name="sq", kind="map", path="tests.test_data_registry:make_squares", options={"n": 6})
    assert reg.names() == ["digits", "sq"] and reg.get("sq") is spec and "digits" in reg
    reg.register(DataSpec(name="digits", kind="digits"))  # same declaration again: fine
    with pytest.raises(DataConfigError, match="declared twice with different settings"):
        reg.register(DataSpec(name="digits", kind="digits", batch_size=3))
    with pytest.raises(DataConfigError, match=r"dataset 'nope': not declared \(declared: digits, sq\)"):
        reg.get("nope")
    pipe = reg.pipeline("sq", rank=0, world_size=1, announce=False)
    assert len(pipe.source) == 6 and len(pipe) == 0  # 6 samples cannot fill one batch of 32 under drop_tail
    assert list(pipe) == [] and pipe.epoch == 1
    with pytest.raises(DataNotFoundError) as info:
        open_source(DataSpec(name="imagenet", kind="shards", path=str(tmp_path / "missing")))
    assert info.value.dataset == "imagenet" and info.value.file == str(tmp_path / "missing")
    with pytest.raises(DataConfigError, match="cannot be imported"):
        open_source(DataSpec(name="m", kind="map", path="tests.test_data_registry:nothing"))


def test_map_kind_in_code_and_from_a_factory():
    in_code = build_pipeline(DataSpec(name="sq", kind="map", dataset=Squares(8), batch_size=4, shuffle=False,
                                      workers=0, preview_interval=None), 0, 1, announce=False)
    batches = list(in_code)
    assert batches[1]["input"].flatten().tolist() == [16.0, 25.0, 36.0, 49.0]
    assert batches[1]["target"].tolist() == [0, 1, 0, 1]


def test_build_pipeline_registers_and_reports_progress_that_folds_into_the_registry(recorder):
    clock = ManualClock()
    spec = DataSpec(name="digits", kind="digits", batch_size=100, tail="pad", workers=0, report_interval=5.0,
                    preview_interval=2.0)
    world = 3
    pipes = [build_pipeline(spec, r, world, clock=clock) for r in range(world)]
    registered = recorder.of(ev.DATASET_REGISTERED)
    assert [e["rank"] for e in registered] == [0, 1, 2]
    first = registered[0]
    assert (first["dataset"], first["size"], first["batch_size"], first["world_size"]) == ("digits", 1797, 100, 3)
    assert first["shards"] is None and first["fields"]["input"] == {"dtype": "float32", "shape": [1, 8, 8]}
    assert first["assignment"]["steps"] == 6 and first["assignment"]["samples"] == 599
    its = [iter(p) for p in pipes]
    for _ in range(6):
        for it in its:
            next(it)
        clock.now += 1.0
    for it in its:
        assert next(it, None) is None
    progress = recorder.of(ev.DATA_PROGRESS)
    assert any(not e["done"] for e in progress), "periodic reports while the epoch runs"
    assert [e["done"] for e in progress if e["rank"] == 0][-1] is True
    timing = recorder.of(ev.DATA_TIMING)
    assert timing and {"read_s", "map_s", "wait_s", "wait_fraction", "samples_per_s"} <= set(timing[0])
    previews = recorder.of(ev.DATA_PREVIEW)
    assert previews  # the preview tap is rate limited; its own tests check the limit
    assert json.loads(json.dumps(recorder.events)) == recorder.events  # what the coordinator's JSON lines carry
    view = ev.registry_view(recorder.events)["digits"]
    assert view["size"] == 1797 and view["world_size"] == 3 and (view["epoch"], view["position"]) == (1, 0)
    assert {r: v["samples"] for r, v in view["ranks"].items()} == {0: {0: 599}, 1: {0: 599}, 2: {0: 599}}
    assert view["ranks"][1]["assignment"]["rank"] == 1 and set(view["timing"]) == {0, 1, 2}


def test_registry_view_adds_counts_across_a_restart_at_another_world_size(recorder):
    clock = ManualClock()
    spec = DataSpec(name="d", kind="synthetic", options={"size": 100, "shape": [2]}, batch_size=10, workers=0,
                    tail="pad", preview_interval=None, report_interval=0.0)
    first = [build_pipeline(spec, r, 2, clock=clock) for r in range(2)]
    its = [iter(p) for p in first]
    for _ in range(2):
        for it in its:
            next(it)
    state = first[0].state_dict()
    for p in first:
        p.close()
    second = [build_pipeline(spec, r, 4, clock=clock) for r in range(4)]
    for p in second:
        p.load_state_dict(state)
        list(p)
    view = ev.registry_view(recorder.events)["d"]
    total = sum(n for r in view["ranks"].values() for n in r["samples"].values())
    assert total == 100 and view["world_size"] == 4
    assert [(r["saved_world_size"], r["world_size"], r["position"]) for r in view["resumes"]] == [(2, 4, 40)] * 4
    assert view["ranks"][0]["samples"] == {0: 20 + 15}


def test_the_epoch_after_a_resumed_one_is_described_at_its_full_share(recorder):
    # The demo's Datasets page, in epoch 5, read "slots 928-1,797" and "328 of 218 this epoch" for each
    # rank: the part of epoch 3 that the ranks had resumed into, described once at the resume.
    clock = ManualClock()
    spec = DataSpec(name="d", kind="synthetic", options={"size": 100, "shape": [2]}, batch_size=5, workers=0,
                    tail="pad", preview_interval=None, report_interval=60.0)
    saving = build_pipeline(spec, 0, 2, clock=clock)
    batches = iter(saving)
    for _ in range(4):
        next(batches)
    state = saving.state_dict()  # epoch 0 at position 40
    saving.close()
    pipes = [build_pipeline(spec, r, 4, clock=clock) for r in range(4)]
    for pipe in pipes:
        pipe.load_state_dict(state)
        list(pipe)  # the rest of epoch 0: 60 samples, 15 a rank
    resumed = ev.registry_view(recorder.events)["d"]["ranks"][0]
    assert (resumed["assignment"]["start_position"], resumed["assignment"]["samples"]) == (40, 15)
    epoch_1 = [iter(pipe) for pipe in pipes]
    for it in epoch_1:
        next(it)
    view = ev.registry_view(recorder.events)["d"]
    for rank, entry in view["ranks"].items():
        assignment = entry["assignment"]
        assert (assignment["start_position"], assignment["samples"], assignment["rank"]) == (0, 25, rank)
    assert (view["epoch"], view["position"]) == (1, 0)
    for it in epoch_1:
        list(it)
    for pipe in pipes:  # epoch 2 is dealt as epoch 1 was: nothing new to say
        next(iter(pipe))
    described = [e for e in recorder.of(ev.DATA_PROGRESS) if "assignment" in e]
    assert sorted((e["rank"], e["epoch"]) for e in described) == [(r, 1) for r in range(4)]
    for pipe in pipes:
        pipe.close()


def test_registry_view_ignores_foreign_and_malformed_events():
    assert ev.registry_view([{"type": "barrier"}, {"type": ev.DATA_PROGRESS, "dataset": "x", "rank": "0"},
                             {"type": ev.DATA_PROGRESS}]) == {
        "x": {"name": "x", "ranks": {}, "epoch": 0, "position": 0, "resumes": [], "timing": {}, "preview": {}}}


def test_a_step_report_moves_the_dataset_forward_between_progress_reports():
    """The Tasks page showed the dataset 51.6% through the epoch and every rank 67.7%: the dataset's
    position moved only with ``data_progress`` (every 5 s), the ranks' with their step reports."""
    registered = {"type": ev.DATASET_REGISTERED, "dataset": "d", "rank": 0, "size": 1000, "world_size": 2}
    progress = {"type": ev.DATA_PROGRESS, "dataset": "d", "rank": 0, "epoch": 0, "position": 100, "size": 1000,
                "samples": 50, "session": "s"}
    fold = ev.RegistryFold()
    for event in (registered, progress):
        assert fold.apply(event)
    assert fold.apply({"type": EventType.STEP, "rank": 0, "step": 30, "dataset": "d", "epoch": 0, "position": 300})
    assert (fold.view["d"]["epoch"], fold.view["d"]["position"]) == (0, 300)
    assert fold.view["d"]["ranks"][0]["position"] == 300
    fold.apply({"type": EventType.STEP_PROGRESS, "rank": 0, "step": 20, "dataset": "d", "epoch": 0, "position": 200})
    assert fold.view["d"]["position"] == 300  # an older report does not move it back
    assert fold.apply({"type": EventType.STEP, "rank": 0, "step": 31, "dataset": "other", "epoch": 0,
                       "position": 5}) is False  # no dataset made from a step report
    assert fold.apply({"type": EventType.STEP, "rank": 1, "step": 31, "dataset": "d", "epoch": 0,
                       "position": 900}) is False  # nor a rank that did not register it
    assert fold.apply({"type": EventType.STEP, "rank": 0, "step": 32}) is False  # a report with no data
    assert set(fold.view) == {"d"} and fold.view["d"]["position"] == 300
    assert fold.snapshot()["d"]["samples_in_epoch"] == 50  # these reports carried no count


def test_the_summary_names_the_rank_that_waits_longest_for_its_data():
    fold = ev.RegistryFold()
    assert fold.apply({"type": ev.DATASET_REGISTERED, "dataset": "d", "rank": 0, "size": 100, "world_size": 3})
    for rank, fraction in ((0, 0.01), (1, 0.43), (2, 0.02)):
        assert fold.apply({"type": ev.DATA_TIMING, "dataset": "d", "rank": rank, "samples_per_s": 17.0,
                           "wait_fraction": fraction})
    timing = fold.snapshot()["d"]["timing"]
    assert (timing["wait_fraction_max"], timing["wait_fraction_max_rank"], timing["ranks"]) == (0.43, 1, 3)
    assert timing["wait_fraction_mean"] == round((0.01 + 0.43 + 0.02) / 3, 4)
    empty = ev.RegistryFold()
    empty.apply({"type": ev.DATASET_REGISTERED, "dataset": "e", "rank": 0, "size": 10})
    assert (empty.snapshot()["e"]["timing"]["wait_fraction_max"], empty.snapshot()["e"]["timing"]
            ["wait_fraction_max_rank"]) == (None, None)  # no timing yet: nothing to name
