"""``CheckpointSpec``: the ``checkpoint`` section of a job's YAML config.

One frozen dataclass whose fields are the section's keys; it validates itself
in ``__post_init__`` and raises :class:`CheckpointConfigError` naming the key,
so ``torchrt/config.py`` can wrap the message with the file name. The manager
is built from it with ``CheckpointManager.from_spec(spec)``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from torchrt.checkpoint.errors import CheckpointConfigError

__all__ = ["ON_ERROR", "WHEN_BUSY", "CheckpointSpec", "OnError", "WhenBusy"]

OnError = Literal["continue", "stop"]
WhenBusy = Literal["queue", "skip"]
ON_ERROR: tuple[str, ...] = get_args(OnError)
WHEN_BUSY: tuple[str, ...] = get_args(WhenBusy)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """Where and how often to checkpoint.

    dir
        Root directory; each checkpoint is ``<dir>/step_<N>/``.
    every_steps, every_seconds
        Triggers of ``maybe_save`` (either, both, or neither: then only
        explicit ``save`` calls write checkpoints).
    keep
        Committed checkpoints to keep (older ones are deleted only after a
        newer one is committed).
    async_save
        ``save`` returns once the state is being staged (True) or once the
        checkpoint is committed (False).
    writer_threads
        Parallel file writers per rank (one data file each).
    on_error
        ``continue``: a failed save is an event and training goes on;
        ``stop``: the next ``save``/``maybe_save``/``wait`` raises.
    when_busy
        A save requested while the previous one is still writing: ``queue``
        (wait for the staging buffer, then save) or ``skip`` (drop it, with a
        ``checkpoint_skipped`` event). Never interleaved.
    """

    dir: str
    every_steps: int | None = None
    every_seconds: float | None = None
    keep: int = 3
    async_save: bool = True
    writer_threads: int = 4
    on_error: OnError = "continue"
    when_busy: WhenBusy = "queue"

    def __post_init__(self) -> None:
        def bad(key: str, expected: str, got: object) -> CheckpointConfigError:
            return CheckpointConfigError(f"checkpoint.{key}: expected {expected}, got {got!r}")

        if not isinstance(self.dir, str) or not self.dir:
            raise bad("dir", "a non-empty path", self.dir)
        if self.every_steps is not None and (
                isinstance(self.every_steps, bool) or not isinstance(self.every_steps, int) or self.every_steps < 1):
            raise bad("every_steps", "an integer >= 1 or null", self.every_steps)
        if self.every_seconds is not None and (
                isinstance(self.every_seconds, bool) or not isinstance(self.every_seconds, (int, float))
                or self.every_seconds <= 0):
            raise bad("every_seconds", "a number > 0 or null", self.every_seconds)
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise bad("keep", "an integer >= 1", self.keep)
        if not isinstance(self.async_save, bool):
            raise bad("async_save", "a boolean", self.async_save)
        if isinstance(self.writer_threads, bool) or not isinstance(self.writer_threads, int) \
                or not 1 <= self.writer_threads <= 64:
            raise bad("writer_threads", "an integer in 1..64", self.writer_threads)
        if self.on_error not in ON_ERROR:
            raise bad("on_error", " or ".join(ON_ERROR), self.on_error)
        if self.when_busy not in WHEN_BUSY:
            raise bad("when_busy", " or ".join(WHEN_BUSY), self.when_busy)
