"""Where samples come from: batch-level readers over map-style datasets, arrays and generators.

Design
------
A :class:`Source` reads a whole batch at once: ``read(indices) -> {field:
tensor}`` with a leading batch dimension. Reading by batch is what makes the
pipeline fast (one fancy-index on an array or memmap instead of ``batch_size``
Python calls and a collate), so the pipeline maps batches, never samples.

Sources here:

* :class:`MapSource` adapts any map-style ``torch.utils.data.Dataset``. A
  sample may be a ``(input, target)`` pair, a mapping of fields, or a single
  tensor/array (field ``input``). Samples are stacked per field; a sample whose
  shape differs from the first one's raises :class:`ShapeMismatchError`, and an
  exception raised by the dataset is re-raised as :class:`SampleReadError`
  naming the dataset, its file (``dataset.path`` or ``dataset.root`` if it has
  one) and the index.
* :class:`ArraySource` serves in-memory arrays, one per field.
* :class:`DigitsSource`: scikit-learn's digits (1,797 8×8 grey images, ten
  classes), the one real dataset that ships offline in a wheel; ``input`` is
  ``float32 [1, 8, 8]`` in ``[0, 1]``, ``target`` ``int64``.
* :class:`SyntheticSource`: an "ImageNet-like" image-classification set of any
  size, ``uint8 [3, 224, 224]`` and 1,000 classes by default. Sample ``i`` is
  a pure function of ``(seed, i)``: its label is a hash of ``i``, its pixels a
  class colour plus a window of a fixed random pool at a hashed offset, so a
  batch is generated at memory speed with no per-sample Python.

Every source checks indices before reading (:class:`IndexOutOfRangeError`
names the dataset, the file and the first bad index).
"""

from __future__ import annotations

import abc
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torchrt.data.errors import (
    DataConfigError,
    DataError,
    IndexOutOfRangeError,
    SampleReadError,
    ShapeMismatchError,
)

logger = logging.getLogger(__name__)

__all__ = ["ArraySource", "DigitsSource", "MapSource", "Source", "SyntheticSource", "field_spec"]

Batch = dict[str, Any]


def field_spec(array: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """``{"dtype": ..., "shape": [...]}`` of one sample of a batched array (leading dim dropped)."""
    dtype = str(array.dtype).removeprefix("torch.")
    return {"dtype": dtype, "shape": list(array.shape[1:])}


class Source(abc.ABC):
    """A dataset that reads whole batches. Subclasses set ``name``, ``file`` and ``kind``."""

    name: str = "dataset"
    file: str | None = None
    kind: str = "source"

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _read(self, indices: np.ndarray) -> Batch:
        """Read valid ``indices``; returns fields with a leading dimension of ``len(indices)``."""

    def read(self, indices: np.ndarray | Sequence[int]) -> Batch:
        """The samples at ``indices`` as one batch: ``{field: tensor[len(indices), ...]}``.

        Tensors must be new (not views of the source's storage): the pipeline zeroes padding
        rows in place.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ShapeMismatchError(f"indices must be one-dimensional, got shape {list(idx.shape)}",
                                     dataset=self.name, file=self.file)
        size = len(self)
        bad = (idx < 0) | (idx >= size)
        if bad.any():
            first = int(idx[np.argmax(bad)])
            raise IndexOutOfRangeError(f"out of range for a dataset of {size} samples", dataset=self.name,
                                       file=self.file, index=first)
        return self._read(idx)

    def fields(self) -> dict[str, dict[str, Any]]:
        """dtype and per-sample shape of each field (reads sample 0; empty if the dataset is)."""
        if len(self) == 0:
            return {}
        batch = self.read(np.zeros(1, dtype=np.int64))
        return {k: field_spec(v) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for the registry: kind, file, size, shards, fields."""
        return {"kind": self.kind, "path": self.file, "size": len(self), "shards": None,
                "fields": self.fields()}


class ArraySource(Source):
    """In-memory arrays (one per field, same leading length)."""

    kind = "arrays"

    def __init__(self, arrays: Mapping[str, np.ndarray | torch.Tensor], *, name: str = "arrays",
                 file: str | None = None) -> None:
        if not arrays:
            raise DataConfigError("no fields given", dataset=name, file=file)
        self.name, self.file = name, file
        self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {k: len(v) for k, v in self._arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ShapeMismatchError(f"fields have different lengths {lengths}", dataset=name, file=file)
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def _read(self, indices: np.ndarray) -> Batch:
        return {k: torch.from_numpy(np.ascontiguousarray(v[indices])) for k, v in self._arrays.items()}

    def fields(self) -> dict[str, dict[str, Any]]:
        return {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in self._arrays.items()}


def _digits_file() -> str | None:
    try:
        import sklearn.datasets

        return os.path.join(os.path.dirname(sklearn.datasets.__file__), "data", "digits.csv.gz")
    except ImportError:
        return None


class DigitsSource(ArraySource):
    """scikit-learn's digits: 1,797 grey 8×8 images of the digits 0-9 (ships with the wheel)."""

    kind = "digits"

    def __init__(self, *, name: str = "digits") -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
            raise DataConfigError("the digits dataset needs scikit-learn (pip install scikit-learn)",
                                  dataset=name) from e
        digits = load_digits()
        images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
        super().__init__({"input": images, "target": digits.target.astype(np.int64)}, name=name,
                         file=_digits_file())


_M1, _M2, _G = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _hash64(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of ``x + salt`` on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF) * _G
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


class SyntheticSource(Source):
    """A deterministic image-classification set of any size ("ImageNet-like": 3×224×224, 1,000 classes)."""

    kind = "synthetic"
    _POOL = 1 << 20

    def __init__(self, size: int, *, shape: Sequence[int] = (3, 224, 224), num_classes: int = 1000,
                 seed: int = 0, name: str = "synthetic") -> None:
        if size < 0:
            raise DataConfigError(f"size must be >= 0, got {size}", dataset=name)
        if num_classes < 1:
            raise DataConfigError(f"num_classes must be >= 1, got {num_classes}", dataset=name)
        if not shape or any(int(s) < 1 for s in shape):
            raise DataConfigError(f"shape must be a list of positive sizes, got {list(shape)}", dataset=name)
        self.name, self.size, self.shape = name, int(size), tuple(int(s) for s in shape)
        self.num_classes, self.seed = int(num_classes), int(seed)
        self._pixels = math.prod(self.shape)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        self._pool = rng.integers(0, 64, self._POOL + self._pixels, dtype=np.uint8)
        channels = self.shape[0] if len(self.shape) == 3 else 1
        self._colours = rng.integers(0, 192, (self.num_classes, channels), dtype=np.uint8)

    def __len__(self) -> int:
        return self.size

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return (_hash64(indices, self.seed) % np.uint64(self.num_classes)).astype(np.int64)

    def _read(self, indices: np.ndarray) -> Batch:
        labels = self.labels(indices)
        offsets = (_hash64(indices, self.seed + 1) % np.uint64(self._POOL)).astype(np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(self._pool, self._pixels)
        images = windows[offsets].reshape(len(indices), *self.shape)
        colour = self._colours[labels]
        if len(self.shape) == 3:
            images += colour[:, :, None, None]
        else:
            images += colour.reshape((len(indices),) + (1,) * len(self.shape))
        return {"input": torch.from_numpy(images), "target": torch.from_numpy(labels)}

    def fields(self) -> dict[str, dict[str, Any]]:
        return {"input": {"dtype": "uint8", "shape": list(self.shape)}, "target": {"dtype": "int64", "shape": []}}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_classes": self.num_classes, "data_seed": self.seed}


def _dataset_file(dataset: Any) -> str | None:
    for attr in ("path", "root", "file", "filename"):
        value = getattr(dataset, attr, None)
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    return None


class MapSource(Source):
    """Any map-style dataset (``__len__`` + ``__getitem__``), read sample by sample and stacked."""

    kind = "map"

    def __init__(self, dataset: Any, *, name: str | None = None, file: str | None = None) -> None:
        self.name = name or type(dataset).__name__
        self.file = file or _dataset_file(dataset)
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise DataConfigError(f"{type(dataset).__name__} is not a map-style dataset "
                                  "(needs __len__ and __getitem__)", dataset=self.name, file=self.file)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _sample(self, index: int) -> dict[str, Any]:
        try:
            sample = self.dataset[index]
        except DataError:
            raise
        except Exception as e:
            raise SampleReadError(f"{type(e).__name__}: {e}", dataset=self.name, file=self.file,
                                  index=index) from e
        if isinstance(sample, Mapping):
            return dict(sample)
        if isinstance(sample, (tuple, list)) and len(sample) == 2:
            return {"input": sample[0], "target": sample[1]}
        return {"input": sample}

    def _read(self, indices: np.ndarray) -> Batch:
        samples = [(int(i), self._sample(int(i))) for i in indices]
        if not samples:
            return {}
        first_index, first = samples[0]
        out: Batch = {}
        for key in first:
            values = []
            for index, sample in samples:
                if key not in sample:
                    raise ShapeMismatchError(f"sample has fields {sorted(sample)}, sample {first_index} has "
                                             f"{sorted(first)}", dataset=self.name, file=self.file, index=index)
                values.append(sample[key])
            out[key] = self._stack(key, values, samples)
        return out

    def _stack(self, key: str, values: list[Any], samples: list[tuple[int, dict[str, Any]]]) -> Any:
        if isinstance(values[0], (torch.Tensor, np.ndarray)):
            tensors = [torch.as_tensor(v) for v in values]
            ref = tensors[0]
            for (index, _), t in zip(samples, tensors, strict=True):
                if t.shape != ref.shape or t.dtype != ref.dtype:
                    raise ShapeMismatchError(
                        f"field {key!r} is {str(t.dtype).removeprefix('torch.')}{list(t.shape)}, but sample "
                        f"{samples[0][0]} has {str(ref.dtype).removeprefix('torch.')}{list(ref.shape)}",
                        dataset=self.name, file=self.file, index=index)
            return torch.stack(tensors)
        if isinstance(values[0], (bool, int, float, np.number)):
            return torch.as_tensor(values)
        return list(values)
