"""The config's ``demo`` section (torchrt/config.py: DemoSection, DemoFaults and the three faults):
strict like every section, nested keys settable with ``--set a.b.c=v``, ranks checked against
the world the ``nodes`` section allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchrt.config import ConfigError, DemoSection, KillWorker, SlowRank, load_config

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"


def test_demo_yaml_has_every_fault_and_a_two_minute_pace():
    demo = load_config(DEMO).demo
    assert demo.faults.kill_worker and demo.faults.stop_node and demo.faults.slow_rank
    steps = 57 * demo.epochs  # 1,797 digits, 4 workers x 8 per step, the last step padded
    assert 90 <= steps * demo.step_delay <= 150


def test_absent_section_is_the_defaults_with_no_faults(tmp_path: Path):
    (tmp_path / "t.py").write_text("")
    (tmp_path / "job.yaml").write_text("job: {name: x}\nentrypoint: {script: t.py}\n")
    demo = load_config(tmp_path / "job.yaml").demo
    assert demo == DemoSection() and demo.faults.ranks() == {}


def test_nested_overrides_set_one_key():
    demo = load_config(DEMO, ["demo.faults.kill_worker.step=5", "demo.faults.stop_node=null",
                              "demo.faults.slow_rank={rank: 0, delay: 0.5}"]).demo
    assert demo.faults.kill_worker == KillWorker(rank=3, step=5)
    assert demo.faults.stop_node is None
    assert demo.faults.slow_rank == SlowRank(rank=0, delay=0.5, from_step=1, until_step=None)


@pytest.mark.parametrize("override, message", [
    ("demo.faults.kill_worker.rank=4",
     "demo.faults.kill_worker.rank: expected a rank < nodes.max x nodes.nproc_per_node (4), got 4"),
    ("demo.faults.kill=1", "demo.faults.kill (from --set): unknown key; accepted keys: kill_worker, stop_node, "
                           "slow_rank"),
    ("demo.faults.stop_node={rank: 0, step: 3}", "demo.faults.stop_node.seconds (from --set): required key is "
                                                 "missing"),
    ("demo.faults.slow_rank.until_step=299",
     "demo.faults.slow_rank.until_step (from --set): expected an integer >= demo.faults.slow_rank.from_step (300) "
     "or null, got 299"),
    ("demo.faults.kill_worker.step=true", "demo.faults.kill_worker.step (from --set): expected an integer >= 1, "
                                          "got true (boolean)"),
    ("demo.faults=[1]", "demo.faults (from --set): expected a mapping of keys, got [1] (list)"),
    ("demo.step_delay=.inf", "demo.step_delay (from --set): expected a finite number >= 0, got inf"),
])
def test_bad_demo_values_name_the_key(override: str, message: str):
    with pytest.raises(ConfigError, match="^" + str(DEMO).replace(".", r"\.") + ": ") as raised:
        load_config(DEMO, [override])
    assert str(raised.value) == f"{DEMO}: {message}"


def test_the_slow_rank_fault_delivers_late_and_the_dataset_counts_the_wait(recorder):
    """The slow rank's late batches are the dataset's wait too, not only the step report's: the
    Datasets page said its ranks waited 0% while Tasks said the slow rank waited 300 ms a step."""
    import torch

    from launch.faults import FaultInjector
    from torchrt.config import DemoFaults
    from torchrt.contract import EventType
    from torchrt.data import ShardedPipeline
    from torchrt.data.sources import ArraySource

    pipeline = ShardedPipeline(ArraySource({"x": torch.zeros(24, 1)}, name="digits"), batch_size=8, workers=0,
                               shuffle=False, preview_interval=None)
    slow = FaultInjector(DemoFaults(slow_rank=SlowRank(rank=0, delay=0.02, from_step=2, until_step=2)), 0, "job",
                         pipeline)
    other = FaultInjector(DemoFaults(slow_rank=SlowRank(rank=1, delay=5.0)), 0, "job", pipeline)  # not this rank
    for step, _batch in enumerate(pipeline, start=1):
        slow.before_step(step)
        other.before_step(step)
    [timing] = recorder.of(EventType.DATA_TIMING)
    assert 0.02 <= timing["wait_s"] < 0.5  # step 2's delay, once
