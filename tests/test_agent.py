"""``python -m launch.agent``'s exit on a signal (torchrun's own ``main`` replaced by one that fails
as torch does; the real agent is driven by tests/test_lifecycle.py)."""

from __future__ import annotations

import signal
import time

import pytest
import torch.distributed.run
from torch.distributed.elastic.multiprocessing.api import SignalException

from launch.agent import main


def stopped_where_torch_trips(_args: list[str]) -> None:
    """torch's metrics wrapper, signalled before its ``start`` is set: the ``finally`` reads it."""
    try:
        raise SignalException("Process 1 got signal: 15", sigval=signal.SIGTERM)
    finally:
        time.time() - start  # type: ignore[name-defined]  # noqa: F821 (the UnboundLocalError torch raises)


def stopped(_args: list[str]) -> None:
    raise SignalException("Process 1 got signal: 2", sigval=signal.SIGINT)


def failed(_args: list[str]) -> None:
    raise ValueError("a worker's own failure")


@pytest.mark.parametrize("torchrun, status, name", [(stopped, 128 + signal.SIGINT, "SIGINT"),
                                                    (stopped_where_torch_trips, 128 + signal.SIGTERM, "SIGTERM")])
def test_a_signal_is_one_line_and_its_status_also_when_torch_trips_over_it(monkeypatch, capsys, torchrun, status,
                                                                           name):
    monkeypatch.setattr(torch.distributed.run, "main", torchrun)
    assert main(["--standalone", "x.py"]) == status
    err = capsys.readouterr().err
    assert err.startswith("torchrt: torchrun (pid ") and f"got {name}; its workers were stopped" in err
    assert len(err.strip().splitlines()) == 1


def test_any_other_failure_propagates_as_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.distributed.run, "main", failed)
    with pytest.raises(ValueError, match="a worker's own failure"):
        main(["--standalone", "x.py"])
