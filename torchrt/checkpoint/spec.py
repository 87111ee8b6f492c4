"""``CheckpointSpec``: the ``checkpoint`` section of a job's YAML config.

One frozen dataclass whose fields are the section's keys, each declared with
its :mod:`torchrt.validation` check; it validates itself in ``__post_init__``
and raises :class:`CheckpointConfigError`, which carries the key and the
expectation, so ``torchrt/config.py`` re-raises it with the file name. The
manager is built from it with ``CheckpointManager.from_spec(spec)``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from torchrt.checkpoint.errors import CheckpointConfigError
from torchrt.errors import FieldError
from torchrt.validation import Boolean, Choice, Integer, Number, Text, check_fields, setting

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

    dir: str = setting(check=Text(), doc="root directory (shared by all nodes); checkpoints are `<dir>/step_<N>/`")
    every_steps: int | None = setting(None, Integer(ge=1, optional=True), doc="`maybe_save` saves every N steps")
    every_seconds: float | None = setting(None, Number(gt=0, optional=True),
                                          doc="`maybe_save` saves every N seconds")
    keep: int = setting(3, Integer(ge=1), doc="committed checkpoints kept (older ones deleted only after a newer "
                                              "commit)")
    async_save: bool = setting(True, Boolean(), doc="`save()` returns once staged (true) or once committed (false)")
    writer_threads: int = setting(4, Integer(ge=1, le=64), doc="parallel writers per rank")
    on_error: OnError = setting("continue", Choice(ON_ERROR), doc="after a failed save: go on, or raise at the "
                                                                  "next save")
    when_busy: WhenBusy = setting("queue", Choice(WHEN_BUSY), doc="a save requested while one is in flight: "
                                                                  "wait for it, or skip (an event)")

    def __post_init__(self) -> None:
        try:
            check_fields(self)
        except FieldError as e:
            raise CheckpointConfigError.like(e) from None
