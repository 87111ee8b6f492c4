"""Test-only fault injection for the file writers (never used in normal runs).

* ``FAULTS.gate``: a ``threading.Event`` set by an in-process test; writers
  wait on it before writing a file, so a test can hold a save "in flight"
  deterministically.
* ``FAULTS.stage_gate``: the same for the background staging copy, so a test
  can mutate state while a save is being staged.
* ``FAULTS.on_busy``: called with the step when ``save`` finds the previous
  save still writing and is about to queue behind it (a test releases the
  writers from there, so the queueing is certain, not a race).
* ``TORCHRT_CHECKPOINT_TEST_HANG="<step>:<path>"`` (environment, for
  subprocess tests): when writing that step, the writer creates ``<path>``
  (its content: the data file it was about to write) after writing half of
  the file, then blocks forever, so a test can SIGKILL the process in the
  middle of a write.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from torchrt.contract import Env

__all__ = ["FAULTS", "Faults"]

HANG_ENV = Env.CHECKPOINT_TEST_HANG


class Faults:
    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.stage_gate: threading.Event | None = None
        self.on_busy: Callable[[int], None] | None = None

    def busy(self, step: int) -> None:
        if self.on_busy is not None:
            self.on_busy(step)

    def before_stage(self, step: int) -> None:
        gate = self.stage_gate
        if gate is not None:
            gate.wait()

    def before_write(self, step: int) -> None:
        gate = self.gate
        if gate is not None:
            gate.wait()

    def mid_write(self, step: int, path: Path) -> None:
        spec = os.environ.get(HANG_ENV)
        if not spec:
            return
        hang_step, _, signal_path = spec.partition(":")
        if int(hang_step) == step:
            Path(signal_path).write_text(str(path))
            threading.Event().wait()  # until the test kills this process


FAULTS = Faults()
