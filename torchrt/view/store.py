"""The series on disk: a compact snapshot plus an append-only segment of 1 s points.

Layout::

    RUN_DIR/series/
      snapshot.json      {"format", "segment": K, "levels", "sets": every series' rings}
      points-K.jsonl     closed 1 s points since that snapshot, one JSON array a line:
                         ["p", part, subject, measure, t, count, min, max, sum, last]
                         or ["f", part, folded]

Design
------
1. :meth:`SeriesStore.flush` (the coordinator's tick, about once a second)
   appends every 1 s point closed since the last flush to ``points-K.jsonl``
   in one write, plus a ``"f"`` line when a part's count of subjects folded into
   ``other`` changed. Nothing is queued in memory: what is not written yet is
   still in the series' first ring.
2. When the segment passes ``segment_bytes`` (default 8 MiB), the store
   *compacts*: it writes ``snapshot.json`` with ``segment`` K+1 (tmp + fsync +
   rename: **the rename is the commit point**), then deletes the segments
   below K+1 and appends to ``points-(K+1).jsonl`` from then on. A store that
   starts on a run directory with series (a coordinator restarted on it)
   compacts at once, so it never appends after a torn line. Disk use is
   bounded like memory: one snapshot (about twice the series' bytes as JSON)
   and one segment.
3. :func:`load` reads the snapshot, then the segments from its K on, pushing
   each point through the same cascade as when it was live
   (:meth:`~torchrt.view.series.Series.absorb`): the restored series equal
   the persisted ones exactly.

Crash behaviour: a crash loses the open second and the points closed since the
last flush (at most one tick); a line torn by the crash is skipped on load. A
crash during compaction before the rename leaves the old snapshot and segment,
complete; after it, the old segments are ignored (their number is below the
snapshot's) and deleted by the next compaction. The segment is not fsync'd:
a process crash loses nothing written, a power loss may lose the last seconds.
A write that fails (disk full, read-only) is reported to :class:`WriteHealth`
and the next flush compacts instead of appending, so once the disk can be
written again the record holds everything in memory; 1 s points that aged out
of the first ring meanwhile survive in the coarser rings.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from torchrt.coordinator.run_dir import WriteHealth, write_text_atomic
from torchrt.errors import TorchrtError
from torchrt.view.series import LEVELS, SeriesBook

__all__ = ["SEGMENT_BYTES", "SERIES_DIR", "SNAPSHOT_FILE", "SeriesFileError", "SeriesStore", "load"]

logger = logging.getLogger(__name__)

SERIES_DIR = "series"
SNAPSHOT_FILE = "snapshot.json"
SEGMENT_BYTES = 8 << 20
FORMAT = 1
_SEGMENT = re.compile(r"points-(\d+)\.jsonl")


class SeriesFileError(TorchrtError, ValueError):
    """A series snapshot that cannot be read back (not this format, other levels, not JSON)."""


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"points-{number}.jsonl"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)), directory / name) for name in names if (m := _SEGMENT.fullmatch(name)))


def _levels() -> list[list[int]]:
    return [[level.resolution_s, level.capacity] for level in LEVELS]


def load(run_dir: Path, book: SeriesBook) -> int:
    """Restore ``book`` from ``RUN_DIR/series``; returns the newest segment number found (0: none)."""
    directory = Path(run_dir) / SERIES_DIR
    path = directory / SNAPSHOT_FILE
    first = 0
    if path.exists():
        expected = f"a series snapshot of format {FORMAT} with levels {_levels()}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("levels") != _levels():
                raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None}")
            first = int(data["segment"])
            book.load(data["sets"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SeriesFileError(f"{path}: expected {expected} ({e}); move it away to replay the run "
                                  f"without its series") from e
    newest = first
    for number, segment in _segments(directory):
        if number >= first:
            _read_segment(segment, book)
            newest = number
    return newest


def _read_segment(path: Path, book: SeriesBook) -> None:
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
                if entry[0] == "p" and len(entry) == 10:
                    book.set(str(entry[1])).get(str(entry[2]), str(entry[3])).absorb([float(v) for v in entry[4:]])
                elif entry[0] == "f":
                    book.set(str(entry[1])).names.folded = int(entry[2])
                else:
                    raise ValueError(entry[0])
            except (ValueError, TypeError, IndexError, KeyError):
                skipped += 1
    if skipped:
        logger.warning("%s: skipped %d lines that are not series points (torn by a crash?)", path, skipped)


class SeriesStore:
    """Writes a :class:`SeriesBook` to ``RUN_DIR/series`` (see the module docstring)."""

    PART = "series"  # how WriteHealth names this writer

    def __init__(self, run_dir: Path, book: SeriesBook, segment: int = 0, health: WriteHealth | None = None,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(run_dir) / SERIES_DIR
        self.book = book
        self.segment = segment
        self.health = health or WriteHealth(Path(run_dir))
        self.segment_bytes = segment_bytes
        self._fd = -1
        self._bytes = 0
        self._folded = {fold: found.names.folded for fold, found in book.sets.items()}
        # never append to what an earlier writer left (its last line may be torn)
        self._compact_next = (self.directory / SNAPSHOT_FILE).exists() or bool(_segments(self.directory))

    def flush(self) -> None:
        """Append the 1 s points closed since the last flush (or compact, see the module docstring)."""
        if self._compact_next:
            self.compact()
            return
        lines: list[str] = []
        for part, subject, measure, series in self.book.each():
            points, complete = series.unsaved_points()
            if not complete:  # more closed than the first ring holds since the last flush
                self.compact()
                return
            lines.extend(_line(["p", part, subject, measure, *p]) for p in points)
        for fold, found in self.book.sets.items():
            if found.names.folded != self._folded.get(fold, 0):
                lines.append(_line(["f", fold, found.names.folded]))
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        try:
            if self._fd < 0:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(_segment_path(self.directory, self.segment),
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as e:
            self.health.failed(self.PART, e)
            self._compact_next = True
            return
        self._saved()
        self.health.succeeded(self.PART)
        self._bytes += len(data)
        if self._bytes > self.segment_bytes:
            self.compact()

    def compact(self) -> None:
        """Write the whole book as the snapshot of the next segment; drop the older segments."""
        number = self.segment + 1
        payload = {"format": FORMAT, "segment": number, "levels": _levels(), "sets": self.book.dump()}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.directory / SNAPSHOT_FILE, json.dumps(payload, separators=(",", ":")),
                              durable=True)
        except OSError as e:
            self.health.failed(self.PART, e)
            self._compact_next = True
            return
        self._close_segment()
        self.segment, self._bytes, self._compact_next = number, 0, False
        self._saved()
        for old, path in _segments(self.directory):
            if old < number:
                try:
                    path.unlink()
                except OSError as e:
                    logger.debug("could not delete the old series segment %s: %s", path, e)
        self.health.succeeded(self.PART)

    def close(self) -> None:
        self.flush()
        self._close_segment()

    def _saved(self) -> None:
        for *_, series in self.book.each():
            series.unsaved = 0
        self._folded = {fold: found.names.folded for fold, found in self.book.sets.items()}

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _line(entry: list[Any]) -> str:
    return json.dumps(entry, separators=(",", ":")) + "\n"
