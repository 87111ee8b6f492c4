"""Typed errors of :mod:`torchrt.checkpoint`.

Every error derives from :class:`CheckpointError` (and so from
:class:`torchrt.errors.TorchrtError`). Messages name the checkpoint directory,
the file or the state key at fault, so a log line alone says what to look at.
"""

from __future__ import annotations

from pathlib import Path

from torchrt.errors import FieldError, TorchrtError

__all__ = [
    "CheckpointConfigError",
    "CheckpointError",
    "CheckpointFailedError",
    "CorruptCheckpointError",
    "NoValidCheckpointError",
    "StagingError",
    "StateMismatchError",
]


class CheckpointError(TorchrtError, RuntimeError):
    """Base class of every checkpoint error."""


class CheckpointConfigError(FieldError, CheckpointError):
    """A setting of :class:`~torchrt.checkpoint.CheckpointSpec` is invalid: a
    :class:`~torchrt.errors.FieldError` whose ``key`` is the spec's field (``keep``)."""

    context = "checkpoint."


class StagingError(CheckpointError):
    """State was mutated while it was being staged, or staging was misused.

    Raised by ``SaveHandle.wait_staged()`` (and by the next ``save()``) when a
    tensor's in-place version counter moved between ``save()`` and the end of
    its copy into the staging buffer. That checkpoint is failed, never
    committed: a torn snapshot is never written as if it were good.
    """


class CheckpointFailedError(CheckpointError):
    """A save failed (staging, write or commit) and ``on_error="stop"`` was configured."""

    def __init__(self, step: int, stage: str, message: str) -> None:
        super().__init__(f"checkpoint step {step} failed during {stage}: {message}")
        self.step = step
        self.stage = stage


class CorruptCheckpointError(CheckpointError):
    """A committed checkpoint's file is missing, truncated or fails its checksum."""

    def __init__(self, path: Path | str, reason: str, file: str | None = None) -> None:
        where = f"{path}/{file}" if file else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = Path(path)
        self.file = file
        self.reason = reason


class NoValidCheckpointError(CheckpointError):
    """Committed checkpoints exist, but every one of them is corrupt or unreadable."""


class StateMismatchError(CheckpointError):
    """The state to restore into does not match the checkpoint (missing key, shape, dtype)."""
