"""Test-wide fixtures."""

from __future__ import annotations

import os

import pytest

from torchrt.contract import Env
from torchrt.coordinator import Coordinator, CoordinatorConfig
from torchrt.telemetry import set_reporter

from tests.helpers import RecordingReporter
# One definition for the session, so every module that asks for it shares the one finished run
# (imported into each test module instead, pytest would build one per module).
from tests.monitor_env import finished_run_dir  # noqa: F401 (a fixture)

# `torchrt run` / `torchrt coordinator` in the tests start no monitor (and no TensorBoard) unless a test
# asks for one (`--monitor`, or its own environment without this): they cost CPU seconds each.
os.environ[Env.MONITOR] = "off"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest work first, so that two workers finish together: the monitor's group (one unit of
    several minutes, see tests/monitor_env.py), then the ``slow`` real-job tests, then the rest
    (each in collection order). Handed out in the order collected, the monitor group came up
    half-way through and the other worker idled at the end.

    Under ``--dist loadgroup`` (``make test``), refuse to run when xdist's grouping did not take:
    it fails silently (pytest-xdist#1386, pytest 9.2), and the shared runs of the grouped modules
    would then be built on every worker, minutes more for the suite."""
    def weight(item: pytest.Item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args[:1] == ("monitor",):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=weight)
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup did not group {len(lost)} tests (e.g. {lost[0]}): this "
                                f"pytest-xdist does not work with this pytest; install the versions setup.cfg pins")


@pytest.fixture(autouse=True)
def _restore_torchrt_environment():
    """Handlers run in-process export TORCHRT_* variables; keep them from leaking into later tests."""
    before = {k: v for k, v in os.environ.items() if k.startswith("TORCHRT_")}
    yield
    for key in [k for k in os.environ if k.startswith("TORCHRT_")]:
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture
def recorder():
    """Install a RecordingReporter process-wide for the test."""
    rec = RecordingReporter()
    previous = set_reporter(rec)
    yield rec
    set_reporter(previous)


@pytest.fixture
def coordinator(tmp_path):
    """A real coordinator on a free loopback port, its run directory under ``tmp_path/run``."""
    c = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0))
    c.start()
    yield c
    c.stop()
