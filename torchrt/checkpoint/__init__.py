"""Asynchronous sharded checkpointing with atomic commit and verified restore.

The training loop's side::

    from torchrt.checkpoint import CheckpointManager, RNGState

    ckpt = CheckpointManager("/shared/ckpt", every_steps=500, keep=3,
                             replicated=("model", "optim", "data", "step"))
    state = {"model": model, "optim": optimizer, "data": loader, "rng": RNGState(), "step": {"n": 0}}
    if (restored := ckpt.load_latest(state)) is not None:
        start = restored.step + 1
    for step in range(start, steps):
        loss = model(batch).sum(); loss.backward()
        optimizer.step()               # waits for an in-flight save's staging by itself
        state["step"]["n"] = step
        ckpt.maybe_save(state, step)   # returns within milliseconds
    ckpt.close()                       # waits for the last commit

Modules, one job each: :mod:`~.state` (what a checkpoint holds),
:mod:`~.layout` (where bytes go), :mod:`~.staging` (persistent host buffers),
:mod:`~.writer` (parallel checksummed durable writes), :mod:`~.group` (ranks
talking through the store), :mod:`~.manifest` (the on-disk format),
:mod:`~.commit` (atomic commit and retention), :mod:`~.reader` (verified
reads), :mod:`~.restore` (restore with fallback), :mod:`~.dcp` (a ``torch.distributed.checkpoint``
StorageReader), :mod:`~.manager` (the API), :mod:`~.spec` (YAML section).
See docs/checkpoint.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported lazily, so the coordinator's view (torchrt.checkpoint.fold) does not pull in
# DTensor and the writers.
_EXPORTS = {
    "CheckpointConfigError": "errors", "CheckpointError": "errors", "CheckpointFailedError": "errors",
    "CorruptCheckpointError": "errors", "NoValidCheckpointError": "errors", "StagingError": "errors",
    "StateMismatchError": "errors",
    "CheckpointManager": "manager", "SaveHandle": "manager", "SaveStatus": "manager",
    "CheckpointReader": "reader", "RestoreResult": "restore", "RNGState": "rng", "CheckpointSpec": "spec",
    "Stateful": "state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchrt.checkpoint' has no attribute {name!r}")
    return getattr(importlib.import_module(f"torchrt.checkpoint.{module}"), name)


def __dir__() -> list[str]:
    return __all__
