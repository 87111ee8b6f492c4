"""TensorBoard in the monitor's process, on the run's event files, loopback only.

The coordinator writes the job's scalars under ``RUN_DIR/tensorboard`` (the snapshot's
``"tensorboard"``); :func:`start_tensorboard` serves that directory with TensorBoard's own
program API (``TensorBoard().configure(...).launch()``) on 127.0.0.1 and a free port, with the
pure-Python loader (``--load_fast=false``: no extra data-server process to outlive us). Its URL
goes into the app's options, hence into the settings API, the navigation and the CSP's
``frame-src`` (TensorBoard can be framed). :func:`start_in_background` does it from a thread, since
importing and starting TensorBoard takes 2-3 s and must not hold the monitor's start.

TensorBoard has no public way to stop its server: it serves from a daemon thread for the rest of
the process's life, which is the monitor's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["TensorBoardError", "start_in_background", "start_tensorboard"]


class TensorBoardError(RuntimeError):
    """TensorBoard could not be started (not installed, or it failed)."""


def start_tensorboard(logdir: str | Path, host: str = "127.0.0.1") -> str:
    """Serve ``logdir`` with TensorBoard on ``host`` and a free port; return its URL."""
    try:
        from tensorboard import program
    except ImportError as e:
        raise TensorBoardError(f"TensorBoard is not installed ({e})") from None
    Path(logdir).mkdir(parents=True, exist_ok=True)
    board = program.TensorBoard()
    try:
        board.configure(argv=[None, "--logdir", str(logdir), "--port", "0", "--host", host,
                              "--load_fast", "false"])
        url: str = board.launch()
    except Exception as e:  # TensorBoard's own errors are of many kinds
        raise TensorBoardError(f"TensorBoard failed to start on {logdir}: {e}") from e
    logger.info("TensorBoard serves %s at %s", logdir, url)
    return url.rstrip("/")


def start_in_background(logdir: Callable[[], str | Path | None], on_ready: Callable[[str], None]) -> threading.Thread:
    """From a daemon thread: ``start_tensorboard(logdir())`` then ``on_ready(url)``; a failure (or no
    directory) is logged as a warning and the monitor goes on without TensorBoard."""

    def run() -> None:
        try:
            directory = logdir()
            if directory is None:
                logger.warning("no TensorBoard: the run has no tensorboard directory")
                return
            on_ready(start_tensorboard(directory))
        except Exception as e:
            logger.warning("the monitor goes on without TensorBoard: %s", e)

    thread = threading.Thread(target=run, name="torchrt-monitor-tensorboard", daemon=True)
    thread.start()
    return thread
