"""The on-disk format: names, per-rank records and the manifest.

Layout of a checkpoint root::

    <dir>/latest                       "step_0000000200\\n": newest commit (a hint)
    <dir>/step_0000000200/
        rank0/data.0 ... data.<k>      rank 0's tensor bytes (one logical stream, cut in files)
        rank0/tree.pt                  rank 0's state tree (torch.save; tensors are placeholders)
        rank0.done                     rank 0's record: its files, sizes, CRC-32s, tensor index
        rank1/...  rank1.done
        manifest.json                  written LAST by rank 0: this is the commit point

A step directory without ``manifest.json`` is not a checkpoint (in progress,
failed or killed) and is never read; it is deleted once a newer step commits.

``manifest.json`` lists every file with its size and CRC-32 (``files``) and
each rank's record (``ranks``): its tree file, its data files with their
ranges of the rank's stream, and ``tensors`` (FQN -> ``[dtype, shape,
offset, nbytes, replicated]``, plus ``global_shape, offsets`` for a piece of
a DTensor). Tensors of replicated keys appear once in the whole checkpoint,
in the record of the rank that wrote them; so does each distinct piece of a
DTensor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchrt.checkpoint.errors import CheckpointError, CorruptCheckpointError
from torchrt.checkpoint.layout import FileRange, Slot

__all__ = ["DONE", "FORMAT", "LATEST", "MANIFEST", "VERSION", "FileEntry", "Manifest", "RankRecord",
           "build_manifest", "parse_step", "read_manifest", "replicated_digest", "step_dir_name"]

FORMAT = "torchrt.checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
DONE = "rank{rank}.done"
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:010d}"


def parse_step(name: str) -> int | None:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def replicated_digest(slots: Sequence[tuple[str, str, tuple[int, ...]]], objects: Sequence[str]) -> str:
    """Digest of the replicated keys' structure (FQNs, dtypes, shapes); equal on every rank or the commit fails."""
    text = json.dumps([sorted((f, d, list(s)) for f, d, s in slots), sorted(objects)])
    return hashlib.sha1(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    crc32: int


@dataclasses.dataclass
class RankRecord:
    """What one rank wrote for one step (``rank<r>.done`` and the report to rank 0)."""

    rank: int
    tree: str
    data_files: list[FileRange]
    slots: dict[str, Slot]
    files: list[FileEntry]
    replicated_digest: str
    stats: dict[str, Any]

    def to_json(self) -> dict:
        return {"ok": True, "rank": self.rank, "tree": self.tree,
                "data_files": [[f.name, f.start, f.size] for f in self.data_files],
                "tensors": {fqn: s.to_json() for fqn, s in self.slots.items()},
                "files": [[f.path, f.size, f.crc32] for f in self.files],
                "replicated_digest": self.replicated_digest, "stats": self.stats}

    @classmethod
    def from_json(cls, d: dict) -> RankRecord:
        return cls(rank=int(d["rank"]), tree=str(d["tree"]),
                   data_files=[FileRange(str(n), int(s), int(z)) for n, s, z in d["data_files"]],
                   slots={fqn: Slot.from_json(fqn, row) for fqn, row in d["tensors"].items()},
                   files=[FileEntry(str(p), int(s), int(c)) for p, s, c in d["files"]],
                   replicated_digest=str(d["replicated_digest"]), stats=dict(d.get("stats", {})))

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclasses.dataclass
class Manifest:
    step: int
    world_size: int
    created_unix: float
    replicated_keys: list[str]
    ranks: list[RankRecord]
    torch_version: str = torch.__version__

    @property
    def files(self) -> dict[str, FileEntry]:
        return {f.path: f for r in self.ranks for f in r.files}

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.ranks)

    def replicated_index(self) -> dict[str, tuple[int, Slot]]:
        """FQN -> (rank that wrote it, its slot) for every replicated tensor."""
        return {fqn: (r.rank, s) for r in self.ranks for fqn, s in r.slots.items() if s.replicated}

    def chunk_index(self) -> dict[str, list[tuple[int, Slot]]]:
        """FQN -> every (rank, slot) holding a piece of that DTensor."""
        out: dict[str, list[tuple[int, Slot]]] = {}
        for r in self.ranks:
            for fqn, s in r.slots.items():
                if s.chunk is not None:
                    out.setdefault(fqn, []).append((r.rank, s))
        return out

    def data_files(self) -> list[FileRange]:
        """Every rank's data files (not the trees), in rank order."""
        return [f for r in self.ranks for f in r.data_files]

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "step": self.step, "world_size": self.world_size,
                "created_unix": self.created_unix, "torch_version": self.torch_version,
                "replicated_keys": self.replicated_keys,
                "files": [{"path": f.path, "size": f.size, "crc32": f.crc32} for f in self.files.values()],
                "ranks": [r.to_json() for r in self.ranks]}

    @classmethod
    def from_json(cls, d: dict) -> Manifest:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a torchrt checkpoint manifest (format {d.get('format')!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"unsupported manifest version {d.get('version')!r} (this torchrt reads {VERSION})")
        m = cls(step=int(d["step"]), world_size=int(d["world_size"]), created_unix=float(d["created_unix"]),
                replicated_keys=list(d["replicated_keys"]), ranks=[RankRecord.from_json(r) for r in d["ranks"]],
                torch_version=str(d.get("torch_version", "")))
        if sorted(r.rank for r in m.ranks) != list(range(m.world_size)):
            raise ValueError(f"manifest of world size {m.world_size} has records for ranks "
                             f"{sorted(r.rank for r in m.ranks)}")
        listed = {f["path"]: (int(f["size"]), int(f["crc32"])) for f in d["files"]}
        if listed != {p: (f.size, f.crc32) for p, f in m.files.items()}:
            raise ValueError("the manifest's file list disagrees with its rank records")
        return m


def build_manifest(step: int, records: Sequence[RankRecord], replicated_keys: Sequence[str]) -> Manifest:
    """The manifest of a step from every rank's record; raises if the records disagree."""
    digests = {r.replicated_digest for r in records}
    if len(digests) > 1:
        raise CheckpointError(f"step {step}: the replicated keys {list(replicated_keys)} differ in structure "
                              "across ranks (names, dtypes or shapes); they must be identical on every rank")
    return Manifest(step=step, world_size=len(records), created_unix=time.time(),
                    replicated_keys=list(replicated_keys), ranks=sorted(records, key=lambda r: r.rank))


def read_manifest(step_dir: Path) -> Manifest:
    """Parse ``step_dir/manifest.json``; a missing or malformed one is a :class:`CorruptCheckpointError`."""
    path = step_dir / MANIFEST
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CorruptCheckpointError(step_dir, "not committed (no manifest.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(step_dir, f"unreadable manifest: {e}", MANIFEST) from e
