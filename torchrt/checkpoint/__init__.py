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
StorageReader), :mod:`~.manager` (the API), :mod:`~.spec` (YAML section),
:mod:`~.throughput` (the MB/s figure events report).
See docs/checkpoint.md.
"""

from __future__ import annotations

from torchrt._lazy import lazy_exports

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

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
