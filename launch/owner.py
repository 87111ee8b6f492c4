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

An owner that ends the job normally also says why, so the record does not read as
a kill: it starts the coordinator with a stdin pipe, and :func:`tell_ended`
writes one line ``ended REASON`` there (``torchrun exited with status 0``). The
coordinator's :func:`listen_for_end` reads its stdin (only with ``--owner-pid``,
never from a terminal) and drains with that reason. End of file without the line
means nothing by itself: an owner that was killed is found by the watch above.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

import psutil

logger = logging.getLogger(__name__)

__all__ = ["listen_for_end", "owner_alive", "tell_ended", "watch_owner"]

POLL_INTERVAL_S = 0.2
ENDED = "ended "  # the line an owner writes on its coordinator's stdin: ENDED + reason
MAX_REASON = 200  # characters of a reason kept (a line; the record is not a log of the owner's)


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


def _one_line(reason: str) -> str:
    """``reason`` as the line carries it, and the record keeps it: whitespace runs as one space,
    at most MAX_REASON characters."""
    return " ".join(reason.split())[:MAX_REASON]


def tell_ended(proc: subprocess.Popen[bytes], reason: str) -> bool:
    """Tell ``proc`` (started with ``stdin=PIPE``) that its owner ended the job, and why; the
    pipe is closed after it. False when it could not be told (no pipe, or it is gone)."""
    if proc.stdin is None:
        return False
    line = ENDED + _one_line(reason) + "\n"
    try:
        with proc.stdin:
            proc.stdin.write(line.encode())
    except OSError as e:  # BrokenPipeError: it exited already
        logger.debug("could not tell pid %d that the job ended: %s", proc.pid, e)
        return False
    return True


def listen_for_end(stream: IO[str], on_end: Callable[[str], None]) -> threading.Thread | None:
    """Read ``stream`` (this process's stdin, an owner's pipe) from a daemon thread and call
    ``on_end(reason)`` once for its ``ended REASON`` line; other lines are ignored. None (nothing
    read) when ``stream`` is a terminal: what a user types there is not the owner's word."""
    if stream.isatty():
        return None

    def listen() -> None:
        try:
            for line in stream:
                if line.startswith(ENDED):
                    on_end(_one_line(line[len(ENDED):]) or "its owner ended the job")
                    return
        except (OSError, ValueError) as e:  # a closed or unreadable stdin: nothing to hear
            logger.debug("stdin: %s", e)

    thread = threading.Thread(target=listen, name="torchrt-owner-stdin", daemon=True)
    thread.start()
    return thread
