"""The on-disk sharded format: a writer, a memmap reader, checksums.

Layout of a dataset directory::

    index.json                   written last (tmp + rename): the dataset exists once it does
    shard-00000.input.npy        one .npy file per shard and field, rows = samples
    shard-00000.target.npy
    shard-00001.input.npy
    ...

``index.json``::

    {"format": "torchrt.shards", "version": 1, "name": "...", "size": N,
     "fields": {"input": {"dtype": "uint8", "shape": [3, 32, 32]}, "target": {...}},
     "shards": [{"start": 0, "size": n0,
                 "files": {"input": {"file": "shard-00000.input.npy", "bytes": B, "sha256": "..."},
                           "target": {...}}},
                ...]}

Design
------
Plain ``.npy`` files so any tool can read a shard, and ``numpy.load(...,
mmap_mode="r")`` serves batches by fancy indexing (rows sorted per shard for
locality) without loading a shard. Integrity is checked in two layers: the
size of every file against the index when the dataset is opened (cheap: finds
truncation), and the sha256 of a shard's files against the index before its
first read in a process (``verify="lazy"``, default), for all shards at open
(``verify="eager"``), or never (``verify="off"``). Verification runs once per
shard and process; a shard that fails raises :class:`ShardCorruptError`
naming the dataset, the file and the sample index whose read found it. A
shard's ``.npy`` header must agree with the index (else
:class:`ShapeMismatchError`), and a missing directory, index or shard file is
a :class:`DataNotFoundError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from torchrt.data.errors import (
    DataConfigError,
    DataError,
    DataNotFoundError,
    ShapeMismatchError,
    ShardCorruptError,
)
from torchrt.data.sources import Batch, Source

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "INDEX_FILE", "ShardReader", "ShardWriter", "Verify", "write_shards"]

FORMAT = "torchrt.shards"
VERSION = 1
INDEX_FILE = "index.json"
Verify = Literal["lazy", "eager", "off"]
_HASH_CHUNK = 8 << 20


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ShardWriter:
    """Append batches of samples; every ``shard_size`` samples become one shard.

    Fields (names, dtypes, per-sample shapes) are fixed by the first batch (or
    ``fields``); a later batch that disagrees raises :class:`ShapeMismatchError`
    naming the dataset index of its first row. ``close()`` (or leaving the
    ``with`` block without an exception) writes ``index.json``.
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None, shard_size: int = 65536,
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        if shard_size < 1:
            raise DataConfigError(f"shard_size must be >= 1, got {shard_size}", dataset=self.name)
        if (self.path / INDEX_FILE).exists() and not overwrite:
            raise DataConfigError("a sharded dataset already exists here (pass overwrite=True to replace it)",
                                  dataset=self.name, file=self.path / INDEX_FILE)
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            (self.path / INDEX_FILE).unlink(missing_ok=True)
        self.shard_size = shard_size
        self._fields: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_rows = 0
        self._shards: list[dict[str, Any]] = []
        self._size = 0
        self._closed = False

    def write(self, batch: Mapping[str, Any]) -> None:
        """Append the rows of ``batch`` (``{field: array[n, ...]}``)."""
        arrays = {k: _as_array(v) for k, v in batch.items()}
        first_row = self._size + self._pending_rows
        if self._fields is None:
            if not arrays:
                raise DataConfigError("a batch needs at least one field", dataset=self.name)
            self._fields = {k: (a.dtype, tuple(a.shape[1:])) for k, a in arrays.items()}
            self._pending = {k: [] for k in arrays}
        if set(arrays) != set(self._fields):
            raise ShapeMismatchError(f"batch has fields {sorted(arrays)}, the dataset has {sorted(self._fields)}",
                                     dataset=self.name, index=first_row)
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ShapeMismatchError(f"fields of one batch have different lengths "
                                     f"{ {k: len(a) for k, a in arrays.items()} }", dataset=self.name,
                                     index=first_row)
        for key, a in arrays.items():
            dtype, shape = self._fields[key]
            if a.dtype != dtype or tuple(a.shape[1:]) != shape:
                raise ShapeMismatchError(f"field {key!r} is {a.dtype}{list(a.shape[1:])}, the dataset's is "
                                         f"{dtype}{list(shape)}", dataset=self.name, index=first_row)
        n = lengths.pop()
        done = 0
        while done < n:
            take = min(n - done, self.shard_size - self._pending_rows)
            for key, a in arrays.items():
                self._pending[key].append(a[done:done + take])
            self._pending_rows += take
            done += take
            if self._pending_rows == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_rows or self._fields is None:
            return
        number = len(self._shards)
        files = {}
        for key, (dtype, shape) in self._fields.items():
            file = f"shard-{number:05d}.{key}.npy"
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {
                "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": (self._pending_rows, *shape)})
            digest = hashlib.sha256(header.getvalue())
            tmp = self.path / (file + ".tmp")
            with open(tmp, "wb") as f:
                f.write(header.getvalue())
                for part in self._pending[key]:
                    data = np.ascontiguousarray(part).tobytes()
                    digest.update(data)
                    f.write(data)
            os.replace(tmp, self.path / file)
            files[key] = {"file": file, "bytes": (self.path / file).stat().st_size, "sha256": digest.hexdigest()}
            self._pending[key] = []
        self._shards.append({"start": self._size, "size": self._pending_rows, "files": files})
        self._size += self._pending_rows
        self._pending_rows = 0

    def close(self) -> Path:
        """Write the last shard and ``index.json``; returns the index path."""
        if self._closed:
            return self.path / INDEX_FILE
        self._flush()
        fields = {k: {"dtype": str(d), "shape": list(s)} for k, (d, s) in (self._fields or {}).items()}
        index = {"format": FORMAT, "version": VERSION, "name": self.name, "size": self._size, "fields": fields,
                 "shards": self._shards}
        tmp = self.path / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.path / INDEX_FILE)
        self._closed = True
        logger.info("wrote dataset %r: %d samples in %d shards at %s", self.name, self._size, len(self._shards),
                    self.path)
        return self.path / INDEX_FILE

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()


def write_shards(path: str | os.PathLike[str], data: Source | Mapping[str, Any] | Iterable[Mapping[str, Any]],
                 *, name: str | None = None, shard_size: int = 65536, chunk: int = 16384,
                 overwrite: bool = False) -> Path:
    """Write ``data`` (a :class:`Source`, a mapping of arrays, or an iterable of batches) as shards."""
    with ShardWriter(path, name=name, shard_size=shard_size, overwrite=overwrite) as writer:
        if isinstance(data, Source):
            for start in range(0, len(data), chunk):
                writer.write(data.read(np.arange(start, min(start + chunk, len(data)))))
        elif isinstance(data, Mapping):
            writer.write(data)
        else:
            for batch in data:
                writer.write(batch)
    return Path(path) / INDEX_FILE


class ShardReader(Source):
    """Read a sharded dataset through memmaps (see the module docstring for checks)."""

    kind = "shards"

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None, verify: Verify = "lazy") -> None:
        self.path = Path(path)
        index_path = self.path / INDEX_FILE
        self.file = str(self.path)
        self.name = name or self.path.name
        if verify not in ("lazy", "eager", "off"):
            raise DataConfigError(f"verify must be 'lazy', 'eager' or 'off', got {verify!r}", dataset=self.name,
                                  file=self.path)
        self.verify = verify
        if not self.path.exists():
            raise DataNotFoundError("no such dataset directory", dataset=self.name, file=self.path)
        if not index_path.exists():
            raise DataNotFoundError(f"no {INDEX_FILE}: not a sharded dataset, or its writer did not finish",
                                    dataset=self.name, file=index_path)
        try:
            index = json.loads(index_path.read_text())
            if index.get("format") != FORMAT or index.get("version") != VERSION:
                raise ValueError(f"format {index.get('format')!r} version {index.get('version')!r}, "
                                 f"expected {FORMAT!r} version {VERSION}")
            self._size = int(index["size"])
            self._fields = {k: (np.dtype(v["dtype"]), tuple(int(s) for s in v["shape"]))
                            for k, v in index["fields"].items()}
            self._shards: list[dict[str, Any]] = list(index["shards"])
            starts = [int(s["start"]) for s in self._shards]
            sizes = [int(s["size"]) for s in self._shards]
        except DataError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ShardCorruptError(f"unreadable index: {type(e).__name__}: {e}", dataset=self.name,
                                    file=index_path) from e
        expected = 0
        for number, (start, size) in enumerate(zip(starts, sizes, strict=True)):
            if start != expected or size < 1:
                raise ShardCorruptError(f"shard {number} covers [{start}, {start + size}), expected to start at "
                                        f"{expected}", dataset=self.name, file=index_path)
            expected += size
        if expected != self._size:
            raise ShardCorruptError(f"shards hold {expected} samples, the index says {self._size}",
                                    dataset=self.name, file=index_path)
        self._starts = np.asarray(starts, dtype=np.int64)
        for number, shard in enumerate(self._shards):
            self._check_files(number, shard)
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._verified: set[int] = set()  # shards checked in this process (kept across pickling)
        self._lock = threading.Lock()
        if verify == "eager":
            for number in range(len(self._shards)):
                self._open(number, None)

    def _check_files(self, number: int, shard: dict[str, Any]) -> None:
        if set(shard["files"]) != set(self._fields):
            raise ShardCorruptError(f"shard {number} has fields {sorted(shard['files'])}, the dataset "
                                    f"{sorted(self._fields)}", dataset=self.name, file=self.path / INDEX_FILE)
        for entry in shard["files"].values():
            file = self.path / entry["file"]
            try:
                actual = file.stat().st_size
            except FileNotFoundError:
                raise DataNotFoundError(f"shard {number} file is missing", dataset=self.name, file=file,
                                        index=int(shard["start"])) from None
            if actual != int(entry["bytes"]):
                raise ShardCorruptError(f"shard {number} file has {actual} bytes, the index says {entry['bytes']} "
                                        "(truncated or rewritten)", dataset=self.name, file=file,
                                        index=int(shard["start"]))

    def __len__(self) -> int:
        return self._size

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def fields(self) -> dict[str, dict[str, Any]]:
        return {k: {"dtype": str(d), "shape": list(s)} for k, (d, s) in self._fields.items()}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "size": self._size, "shards": len(self._shards),
                "fields": self.fields(), "verify": self.verify}

    def verify_all(self) -> None:
        """Check every shard's sha256 now (raises :class:`ShardCorruptError` on the first bad one)."""
        for number, shard in enumerate(self._shards):
            for entry in shard["files"].values():
                self._verify_file(number, shard, entry, int(shard["start"]))
            self._verified.add(number)

    def _verify_file(self, number: int, shard: dict[str, Any], entry: dict[str, Any], index: int) -> None:
        file = self.path / entry["file"]
        actual = _sha256(file)
        if actual != entry["sha256"]:
            start, size = int(shard["start"]), int(shard["size"])
            raise ShardCorruptError(f"shard {number} (samples {start}..{start + size - 1}) failed its sha256 "
                                    f"check: expected {entry['sha256'][:16]}..., got {actual[:16]}...",
                                    dataset=self.name, file=file, index=index)

    def _open(self, number: int, index: int | None) -> dict[str, np.ndarray]:
        maps = self._maps.get(number)
        if maps is not None:
            return maps
        with self._lock:
            maps = self._maps.get(number)
            if maps is not None:
                return maps
            shard = self._shards[number]
            at = int(shard["start"]) if index is None else index
            maps = {}
            for key, entry in shard["files"].items():
                file = self.path / entry["file"]
                if self.verify != "off" and number not in self._verified:
                    self._verify_file(number, shard, entry, at)
                try:
                    array = np.load(file, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError, EOFError) as e:
                    raise ShardCorruptError(f"shard {number}: not a readable .npy file: {e}", dataset=self.name,
                                            file=file, index=at) from e
                dtype, shape = self._fields[key]
                want = (int(shard["size"]), *shape)
                if array.dtype != dtype or tuple(array.shape) != want:
                    raise ShapeMismatchError(f"shard {number} field {key!r} is {array.dtype}{list(array.shape)}, "
                                             f"the index says {dtype}{list(want)}", dataset=self.name, file=file,
                                             index=at)
                maps[key] = array
            self._verified.add(number)
            self._maps[number] = maps
            return maps

    def _read(self, indices: np.ndarray) -> Batch:
        # Gather rows sorted by index (shard by shard, with np.take straight into a contiguous
        # slice: no temporary), then put them back in the requested order with one gather.
        n = len(indices)
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        gathered = {k: np.empty((n, *s), dtype=d) for k, (d, s) in self._fields.items()}
        shard_of = np.searchsorted(self._starts, ordered, side="right") - 1
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [n])), strict=True):
            if lo == hi:
                continue
            number = int(shard_of[lo])
            maps = self._open(number, int(ordered[lo]))
            local = ordered[lo:hi] - self._starts[number]
            for key, array in maps.items():
                np.take(array, local, axis=0, out=gathered[key][lo:hi], mode="clip")  # indices checked in read()
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n)
        return {k: torch.from_numpy(v[inverse]) for k, v in gathered.items()}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
