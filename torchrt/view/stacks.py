"""A stack dump of many ranks, grouped: the "7 ranks in all_reduce, 1 in the data loader" view.

A dump (what the coordinator keeps as ``RUN_DIR/stacks/<request>.json`` and
answers ``dump_stacks`` with) maps each rank asked to its answer::

    {"request": 3, "reason": "requested", "timeout_s": 2.0,
     "ranks": {"0": {"answer": "answered", "after_s": 0.004, "pid": 812,
                     "threads": [{"name": "MainThread", "internal": false, "truncated": 0,
                                  "frames": [{"file": ..., "line": ..., "function": ..., "code": ...}]}],
                     "collectives": {"pending": [...], "groups": {...}}},
               "5": {"answer": "gone"}, "6": {"answer": "no_answer"}}}

(each rank's answer is the worker's ``stacks`` message, see
:mod:`torchrt.telemetry.stacks`, plus ``answer``, a
:class:`~torchrt.contract.StackAnswer`, and ``after_s``).

:func:`group_stacks` puts ranks whose stacks are the same into one
:class:`StackGroup`, largest group first. Two ranks have the same stacks when
their threads, torchrt's own left out and in any order, have the same frames
(file, function, line), except that the line of each thread's innermost frame
is ignored: a rank spinning in a loop is in the same place whichever line of
the loop it was on, while the lines of the outer frames say which call it is
in. The flight recorder's pending collectives are no part of that test: each
group lists those of its ranks, so a rank one collective behind the others
shows. Ranks that did not answer form one group per reason (no answer, gone,
error), after the answered ones. :func:`render` prints a dump py-spy style,
innermost frame first. :func:`compact` keeps one copy of each group's stacks
(the others say ``same_as``), which bounds what a dump of many ranks costs on
the wire by the number of distinct stacks. Pure functions: no clock, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from torchrt.contract import StackAnswer
from torchrt.errors import FieldError

__all__ = ["StackDumpError", "StackGroup", "compact", "format_ranks", "group_stacks", "render", "summary"]

Thread = Mapping[str, Any]
_SITE = "site-packages/"


class StackDumpError(FieldError):
    """A stack dump that is not what :mod:`torchrt.view.stacks` describes."""

    context = "stack dump "


@dataclasses.dataclass(frozen=True)
class StackGroup:
    """Ranks that gave the same answer: the same stacks, or the same reason for none."""

    answer: StackAnswer
    ranks: tuple[int, ...]
    threads: tuple[Thread, ...] = ()  # the lowest rank's, torchrt's own threads included (marked internal)
    where: str | None = None          # innermost function of the main (else first) application thread
    collectives: tuple[tuple[str, tuple[int, ...]], ...] = ()  # pending collective -> the group's ranks in it
    detail: str | None = None         # why not, for an error


def group_stacks(ranks: Mapping[Any, Mapping[str, Any]]) -> list[StackGroup]:
    """Ranks with the same stacks together, largest group first; then those that did not answer."""
    answered: dict[tuple, list[tuple[int, Mapping[str, Any]]]] = {}
    stacks_of: dict[int, tuple] = {}
    referring: list[tuple[Any, int, Mapping[str, Any]]] = []
    others: dict[tuple[StackAnswer, str | None], list[int]] = {}
    for key, entry in ranks.items():
        rank, answer = _rank(key), _answer(key, entry)
        if answer is StackAnswer.ANSWERED and "same_as" in entry:
            referring.append((key, rank, entry))
        elif answer is StackAnswer.ANSWERED:
            stacks_of[rank] = _same_stacks(_threads(key, entry))
            answered.setdefault(stacks_of[rank], []).append((rank, entry))
        else:
            detail = str(entry.get("error")) if answer is StackAnswer.ERROR else None
            others.setdefault((answer, detail), []).append(rank)
    for key, rank, entry in referring:
        same_as = entry["same_as"]
        if not isinstance(same_as, int) or same_as not in stacks_of:
            raise StackDumpError("expected a rank of this dump that answered with its threads",
                                 key=f"ranks.{key}.same_as", got=same_as)
        answered[stacks_of[same_as]].append((rank, entry))
    groups = []
    for members in answered.values():
        members.sort(key=lambda m: m[0])
        threads = tuple(next(e["threads"] for _, e in members if "same_as" not in e))
        groups.append(StackGroup(StackAnswer.ANSWERED, tuple(r for r, _ in members), threads, _where(threads),
                                 _collectives(members)))
    groups.sort(key=lambda g: (-len(g.ranks), g.ranks[0]))
    order = list(StackAnswer)
    for (answer, detail), members in sorted(others.items(), key=lambda item: (order.index(item[0][0]),
                                                                             min(item[1]))):
        groups.append(StackGroup(answer, tuple(sorted(members)), detail=detail))
    return groups


def compact(ranks: Mapping[Any, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The same dump with one copy of each group's stacks: every other rank of a group keeps its
    own answer (pid, timings, collectives) but, instead of its threads, ``same_as``: the rank that
    carries them. :func:`group_stacks` and :func:`render` give the same result for both forms; a
    thousand ranks in one place cost one stack, not a thousand."""
    out = {str(_rank(key)): dict(entry) for key, entry in ranks.items()}
    for group in group_stacks(ranks):
        if group.answer is not StackAnswer.ANSWERED:
            continue
        carrier = next(r for r in group.ranks if "same_as" not in out[str(r)])
        for rank in group.ranks:
            if rank != carrier:
                entry = {k: v for k, v in out[str(rank)].items() if k != "threads"}
                out[str(rank)] = {**entry, "same_as": carrier}
    return out


def summary(groups: Iterable[StackGroup]) -> str:
    """One line: ``7 ranks in all_reduce, 1 in _next_data; 1 gone``. Groups whose main threads are
    in the same function (their other threads differ) count together, with how many stacks they
    are: ``3 ranks in backward (2 stacks)``, not ``2 ranks in backward, 1 in backward``."""
    at: dict[str, list[int]] = {}  # where -> [ranks, groups], largest first (groups come so)
    missing: list[str] = []
    for group in groups:
        count = len(group.ranks)
        if group.answer is StackAnswer.ANSWERED:
            counts = at.setdefault(group.where or "?", [0, 0])
            counts[0] += count
            counts[1] += 1
        else:
            missing.append(f"{count} {_WHY[group.answer]}")
    where = []
    for name, (count, stacks) in sorted(at.items(), key=lambda item: -item[1][0]):
        noun = f" {_plural(count)}" if not where else ""  # "7 ranks in all_reduce, 1 in _next_data"
        where.append(f"{count}{noun} in {name}" + (f" ({stacks} stacks)" if stacks > 1 else ""))
    return "; ".join(p for p in (", ".join(where), ", ".join(missing)) if p) or "no ranks"


def render(dump: Mapping[str, Any], include_internal: bool = False) -> str:
    """A dump as text: a summary line, then each group with its ranks and the lowest rank's stacks."""
    ranks = dump.get("ranks")
    if not isinstance(ranks, Mapping):
        raise StackDumpError(f"expected an object of ranks, got {type(ranks).__name__}", key="ranks")
    groups = group_stacks(ranks)
    total = len(ranks)
    head = f"stack dump {dump.get('request', '?')}"
    if dump.get("reason"):
        head += f" ({dump['reason']})"
    lines = [f"{head}: {summary(groups)}"]
    for group in groups:
        label = f"{_plural(len(group.ranks))} {format_ranks(group.ranks)} ({len(group.ranks)} of {total})"
        if group.answer is not StackAnswer.ANSWERED:
            why = _WHY[group.answer]
            if group.answer is StackAnswer.NO_ANSWER and dump.get("timeout_s") is not None:
                why += f" within {dump['timeout_s']:g} s"
            lines += ["", f"== {label}: {why}" + (f": {group.detail}" if group.detail else "")]
            continue
        lines += ["", f"== {label}: in {group.where or '?'}"]
        for thread in group.threads:
            if thread.get("internal") and not include_internal:
                continue
            lines.append(f"  Thread {thread.get('name')!r}" + (" (torchrt)" if thread.get("internal") else ""))
            for frame in reversed(thread.get("frames") or []):
                lines.append(f"    {frame.get('function')} ({_short(str(frame.get('file')))}:{frame.get('line')})")
                if frame.get("code"):
                    lines.append(f"        {frame['code']}")
            if thread.get("truncated"):
                lines.append(f"    ... {thread['truncated']} outer frames not shown")
        for collective, members in group.collectives:
            lines.append(f"  pending {collective}: {_plural(len(members))} {format_ranks(members)}")
    return "\n".join(lines)


def format_ranks(ranks: Iterable[int]) -> str:
    """``0-6,9``: sorted ranks, consecutive runs as ranges."""
    ordered = sorted(set(ranks))
    runs: list[str] = []
    start = prev = None
    for rank in ordered + [None]:
        if start is not None and (rank is None or rank != prev + 1):
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if rank is not None and start is None:
            start = rank
        prev = rank
    return ",".join(runs)


# ------------------------------------------------------------------ helpers
_WHY = {StackAnswer.ERROR: "could not take stacks", StackAnswer.NO_ANSWER: "no answer",
        StackAnswer.GONE: "gone", StackAnswer.UNKNOWN: "not in the job"}


def _plural(count: int) -> str:
    return "rank" if count == 1 else "ranks"


def _rank(key: Any) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise StackDumpError("expected a rank number", key="ranks", got=key) from None


def _answer(key: Any, entry: Any) -> StackAnswer:
    if not isinstance(entry, Mapping):
        raise StackDumpError(f"expected an object, got {type(entry).__name__}", key=f"ranks.{key}")
    try:
        return StackAnswer(entry.get("answer"))
    except ValueError:
        raise StackDumpError(f"expected one of {', '.join(a.value for a in StackAnswer)}, "
                             f"got {entry.get('answer')!r}", key=f"ranks.{key}.answer") from None


def _threads(key: Any, entry: Mapping[str, Any]) -> list[Thread]:
    threads = entry.get("threads")
    if not isinstance(threads, list) or not all(isinstance(t, Mapping) and isinstance(t.get("frames"), list)
                                                and all(isinstance(f, Mapping) for f in t["frames"])
                                                for t in threads):
        raise StackDumpError("expected a list of threads, each with a list of frames", key=f"ranks.{key}.threads")
    return threads


def _same_stacks(threads: list[Thread]) -> tuple:
    """What two ranks must share to be grouped (see the module docstring)."""
    keys = []
    for thread in threads:
        if thread.get("internal"):
            continue
        frames = [(str(f.get("file")), str(f.get("function")), int(f.get("line") or 0)) for f in thread["frames"]]
        if frames:
            frames[-1] = (*frames[-1][:2], 0)
        keys.append(tuple(frames))
    return tuple(sorted(keys))


def _where(threads: tuple[Thread, ...]) -> str | None:
    mine = [t for t in threads if not t.get("internal") and t.get("frames")]
    main = next((t for t in mine if t.get("name") == "MainThread"), mine[0] if mine else None)
    return str(main["frames"][-1].get("function")) if main is not None else None


def _collectives(members: list[tuple[int, Mapping[str, Any]]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    found: dict[str, list[int]] = {}
    for rank, entry in members:
        collectives = entry.get("collectives")
        pending = collectives.get("pending") if isinstance(collectives, Mapping) else None
        for item in pending if isinstance(pending, list) else []:
            if isinstance(item, Mapping):
                text = f"{item.get('op')} #{item.get('seq')} on {item.get('group') or '?'} ({item.get('state')})"
                found.setdefault(text, []).append(rank)
    return tuple((text, tuple(ranks)) for text, ranks in found.items())


def _short(path: str) -> str:
    """A file under site-packages by its package path (``torch/distributed/...``)."""
    cut = path.rfind(_SITE)
    return path[cut + len(_SITE):] if cut >= 0 else path
