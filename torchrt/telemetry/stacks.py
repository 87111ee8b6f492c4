"""Python stacks of every thread of this worker, on the coordinator's request.

The coordinator pushes ``{"push": "dump_stacks", "request": ID}`` down a
worker's connection; :class:`StackResponder` (the connection's push handler)
answers with one ``stacks`` message: the Python stack of every thread, the
flight recorder's pending collectives, and the time the capture took.

How, and why it answers while the training thread is stuck. The push arrives
in the client's reader thread, which starts a short-lived ``torchrt-stacks``
thread; that thread reads ``sys._current_frames()`` and walks each frame. This
needs the GIL, which the training thread gives up in every case that matters:

* blocked in a collective: torch's c10d bindings release the GIL for the call
  and for ``Work.wait`` (measured with gloo's ``all_reduce`` whose peer never
  arrives: the dump takes well under a millisecond);
* in ``time.sleep`` or any blocking I/O: released;
* in a tight pure-Python loop: the interpreter hands the GIL over at every
  switch interval (5 ms by default).

Only C code that holds the GIL for a long time (a C extension's loop) leaves
no Python thread able to run; such a rank simply does not answer in time and
is reported so. ``faulthandler.dump_traceback`` is no way around that when
called from Python (the caller holds the GIL, and torch's ``_WorkerServer``
``dump_traceback`` handler acquires the GIL before calling it); only its signal
and watchdog paths run without the GIL, and they can only write text to a file
descriptor, with no source lines and no thread names. torch's handler also
writes through a temporary file and needs its own HTTP/Unix-socket server per
worker; here the worker already has a connection to the coordinator, so the
dump goes back over it as structured JSON the coordinator can group.

The flight recorder (``torch._C._distributed_c10d._dump_fr_trace_json``, which
covers gloo and, where it is armed with ``TORCH_NCCL_TRACE_BUFFER_SIZE``,
NCCL; ``_dump_nccl_trace_json`` on torch builds that only have that) says
which collectives this rank has enqueued but not finished, by process group
and sequence number: the "7 ranks wait in all_reduce #58, one never got there"
view. It is read only when this process already imported
``torch.distributed`` (this package never imports torch itself), in a thread
of its own bounded by :data:`FLIGHT_RECORDER_TIMEOUT_S` so that a recorder
that blocks cannot hold back the Python stacks.

Every part of the answer is bounded (:data:`MAX_THREADS`, :data:`MAX_FRAMES`,
innermost frames kept, :data:`MAX_TEXT` characters per string,
:data:`MAX_COLLECTIVES`, :data:`MAX_SHAPES`), and stacks whose JSON exceeds
:data:`MAX_STACKS_BYTES` (only possible with very long non-ASCII names) lose
outer frames until they fit, so one reply stays far below the protocol's line
limit whatever the process does. Threads of torchrt itself (names starting
with :data:`INTERNAL_THREAD_PREFIX`) are marked ``internal``; the thread that
takes the dump is left out.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from torchrt.contract import Op, Push

__all__ = [
    "FLIGHT_RECORDER_TIMEOUT_S",
    "INTERNAL_THREAD_PREFIX",
    "MAX_COLLECTIVES",
    "MAX_FRAMES",
    "MAX_SHAPES",
    "MAX_STACKS_BYTES",
    "MAX_TEXT",
    "MAX_THREADS",
    "StackResponder",
    "capture_threads",
    "pending_collectives",
]

logger = logging.getLogger(__name__)

MAX_THREADS = 64       # threads per dump (the main thread first, then by name)
MAX_FRAMES = 64        # frames per thread, the innermost ones; the outer rest is counted in "truncated"
MAX_TEXT = 240         # characters per file name, function name or source line
MAX_COLLECTIVES = 32   # pending flight-recorder entries per dump, oldest first
MAX_SHAPES = 8         # input shapes per pending collective (a coalesced one may have thousands)
MAX_STACKS_BYTES = 1 << 20  # the threads' JSON; deep stacks lose outer frames until they fit
FLIGHT_RECORDER_TIMEOUT_S = 0.5
INTERNAL_THREAD_PREFIX = "torchrt-"  # torchrt's own threads: client, telemetry, agent watch, stacks

Send = Callable[..., None]  # CoordinatorClient.send: send(op, **fields)
FlightRecorderDump = Callable[..., bytes]


def _cut(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def _frames(frame: FrameType, max_frames: int) -> tuple[list[dict[str, Any]], int]:
    chain: list[FrameType] = []
    outer: FrameType | None = frame
    while outer is not None:
        chain.append(outer)
        outer = outer.f_back
    kept = chain[:max_frames]  # innermost first
    summary = traceback.StackSummary.extract(((f, f.f_lineno) for f in reversed(kept)), lookup_lines=True)
    frames = [{"file": _cut(s.filename), "line": s.lineno, "function": _cut(s.name), "code": _cut(s.line)}
              for s in summary]
    return frames, len(chain) - len(kept)


def capture_threads(max_threads: int = MAX_THREADS, max_frames: int = MAX_FRAMES) -> tuple[list[dict[str, Any]], int]:
    """Stacks of this process's threads but the caller's, outermost frame first; and how many
    threads were left out over ``max_threads``."""
    me = threading.get_ident()
    known = {t.ident: t for t in threading.enumerate()}
    main = threading.main_thread().ident
    current = {ident: frame for ident, frame in sys._current_frames().items() if ident != me}

    def order(ident: int) -> tuple[bool, str]:
        thread = known.get(ident)
        return ident != main, thread.name if thread is not None else ""

    threads: list[dict[str, Any]] = []
    for ident in sorted(current, key=order)[:max_threads]:
        thread = known.get(ident)
        name = thread.name if thread is not None else f"thread {ident}"
        frames, truncated = _frames(current[ident], max_frames)
        threads.append({"name": _cut(name), "ident": ident,
                        "native_id": getattr(thread, "native_id", None),
                        "internal": name.startswith(INTERNAL_THREAD_PREFIX),
                        "frames": frames, "truncated": truncated})
    _fit(threads, MAX_STACKS_BYTES)
    return threads, max(0, len(current) - max_threads)


def _fit(threads: list[dict[str, Any]], budget: int) -> None:
    """Halve the frames every thread keeps (its innermost) until the threads' JSON fits ``budget``."""
    keep = max((len(t["frames"]) for t in threads), default=0)
    while keep > 1 and len(json.dumps(threads)) > budget:
        keep //= 2
        for thread in threads:
            cut = max(0, len(thread["frames"]) - keep)
            thread["frames"] = thread["frames"][cut:]
            thread["truncated"] += cut


def _recorder_dump() -> FlightRecorderDump | None:
    """torch's flight-recorder JSON dump, when this process uses torch.distributed."""
    if "torch.distributed" not in sys.modules:
        return None
    c10d = getattr(getattr(sys.modules.get("torch"), "_C", None), "_distributed_c10d", None)
    return getattr(c10d, "_dump_fr_trace_json", None) or getattr(c10d, "_dump_nccl_trace_json", None)


def pending_collectives(dump: FlightRecorderDump | None = None,
                        now_ns: int | None = None) -> dict[str, Any] | None:
    """The flight recorder's collectives that were enqueued and not completed (not retired), and
    the last collective each process group enqueued, started and completed; None without a recorder.

    Raises ``ValueError`` when the recorder's answer is not the JSON object it documents."""
    dump = dump or _recorder_dump()
    if dump is None:
        return None
    trace = json.loads(dump(True, True))  # includeCollectives, onlyActive
    if not isinstance(trace, dict):
        raise ValueError(f"the flight recorder answered {type(trace).__name__}, expected a JSON object")
    now_ns = time.time_ns() if now_ns is None else now_ns
    # gloo's entries stay "scheduled" once done, and onlyActive keeps them: "retired" is what says done
    entries = [e for e in trace.get("entries") or []
               if isinstance(e, dict) and not e.get("retired") and e.get("state") != "completed"]
    pending = []
    for entry in entries[:MAX_COLLECTIVES]:
        group = entry.get("process_group") or ["", ""]
        created = entry.get("time_created_ns") or 0
        pending.append({"op": _cut(str(entry.get("profiling_name", ""))), "seq": entry.get("collective_seq_id"),
                        "p2p_seq": entry.get("p2p_seq_id") if entry.get("is_p2p") else None,
                        "group": _cut(str(group[-1])), "state": entry.get("state"),
                        "sizes": (entry.get("input_sizes") or [])[:MAX_SHAPES] or None,
                        "timeout_ms": entry.get("timeout_ms"),
                        "age_s": round((now_ns - created) / 1e9, 3) if created else None})
    groups = {_cut(str(pg)): status for pg, status in list((trace.get("pg_status") or {}).items())[:MAX_COLLECTIVES]}
    return {"pending": pending, "more": max(0, len(entries) - MAX_COLLECTIVES), "groups": groups}


class StackResponder:
    """The push handler of a worker's coordinator connection that answers stack-dump requests.

    ``send`` is the connection's ``send(op, **fields)``. Each request is answered from a thread
    of its own, so the connection's reader never waits on a capture."""

    def __init__(self, send: Send, recorder: FlightRecorderDump | None = None) -> None:
        self._send = send
        self._recorder = recorder
        self._recorder_thread: threading.Thread | None = None

    def on_push(self, message: dict[str, Any]) -> None:
        if message.get("push") != Push.DUMP_STACKS:
            return
        threading.Thread(target=self._answer, args=(message.get("request"),),
                         name=f"{INTERNAL_THREAD_PREFIX}stacks", daemon=True).start()

    def answer(self, request: Any) -> dict[str, Any]:
        """The reply to ``request`` (the fields of one ``stacks`` message)."""
        started = time.perf_counter()
        threads, omitted = capture_threads()
        reply: dict[str, Any] = {"request": request, "pid": os.getpid(), "threads": threads,
                                 "threads_omitted": omitted}
        reply.update(self._collectives())
        reply["capture_ms"] = round((time.perf_counter() - started) * 1e3, 3)
        return reply

    def _answer(self, request: Any) -> None:
        try:
            reply = self.answer(request)
        except Exception as e:  # a reply that says why beats no reply: the coordinator waits for it
            logger.exception("torchrt: could not take a stack dump")
            reply = {"request": request, "pid": os.getpid(), "error": _cut(f"{type(e).__name__}: {e}")}
        try:
            self._send(Op.STACKS, **reply)
        except Exception as e:  # the connection went: nobody is left to answer
            logger.warning("torchrt: could not send the stack dump for request %r: %s", request, e)

    def _collectives(self) -> dict[str, Any]:
        """``collectives`` from the flight recorder, bounded by FLIGHT_RECORDER_TIMEOUT_S; or
        ``collectives_error`` saying why not. Nothing when there is no recorder."""
        dump = self._recorder or _recorder_dump()
        if dump is None:
            return {}
        if self._recorder_thread is not None and self._recorder_thread.is_alive():
            return {"collectives_error": "the flight recorder has not yet answered an earlier dump"}
        result: dict[str, Any] = {}

        def read() -> None:
            try:
                result["collectives"] = pending_collectives(dump)
            except Exception as e:  # torch-internal API: whatever it raises is reported, not fatal
                result["collectives_error"] = _cut(f"{type(e).__name__}: {e}")

        self._recorder_thread = threading.Thread(target=read, name=f"{INTERNAL_THREAD_PREFIX}flight-recorder",
                                                 daemon=True)
        self._recorder_thread.start()
        self._recorder_thread.join(FLIGHT_RECORDER_TIMEOUT_S)
        if self._recorder_thread.is_alive():
            return {"collectives_error": f"the flight recorder did not answer within {FLIGHT_RECORDER_TIMEOUT_S:g} s"}
        return result
