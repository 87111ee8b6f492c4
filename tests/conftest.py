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
