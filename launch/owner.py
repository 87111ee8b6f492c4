"""Tie a process's life to the process that started it (its *owner*), SIGKILL of the owner included.

``torchrt run`` starts a coordinator and torchrun as processes of their own
sessions (so that a terminal's Ctrl-C reaches them once, through the runner).
When the runner ends normally it stops them itself; when it is killed no
handler of its own runs, so each of them watches it: :func:`watch_owner` polls
the owner (by pid and start time, so a reused pid is not mistaken for it; a
zombie counts as gone) from a daemon thread and calls ``on_exit`` once when it
is gone. What ``on_exit`` does is the watcher's choice: the coordinator drains
(closes the rendezvous, waits for the job's processes, records its shutdown),
torchrun stops its workers as on SIGTERM.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psutil

logger = logging.getLogger(__name__)

__all__ = ["owner_alive", "watch_owner"]

POLL_INTERVAL_S = 0.2


def owner_alive(owner: psutil.Process) -> bool:
    """Whether ``owner`` still runs (not replaced by another process under its pid, not a zombie)."""
    try:
        return owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch_owner(pid: int, on_exit: Callable[[], None], interval: float = POLL_INTERVAL_S) -> threading.Thread:
    """Call ``on_exit()`` (from a daemon thread) once process ``pid`` has exited, or at once
    if it does not exist; the returned thread is already started."""
    try:
        owner: psutil.Process | None = psutil.Process(pid)
    except psutil.Error:
        owner = None

    def watch() -> None:
        while owner is not None and owner_alive(owner):
            time.sleep(interval)
        logger.info("owner process %d is gone", pid)
        on_exit()

    thread = threading.Thread(target=watch, name=f"torchrt-owner-{pid}", daemon=True)
    thread.start()
    return thread
