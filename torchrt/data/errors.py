"""Typed errors of ``torchrt.data``: every message names the dataset, the file and the index.

All errors derive from :class:`DataError` (a ``ValueError`` and a
:class:`torchrt.errors.TorchrtError`), so one ``except`` catches any bad-input
problem of the data layer; the subclasses also derive
from the builtin a caller would naturally expect (``FileNotFoundError`` for a
missing path, ``IndexError`` for an out-of-range index).

The message is built from the structured fields, e.g.::

    dataset 'imagenet-mini': file '/data/x/shard-00003.input.npy': index 41218: sha256 mismatch ...

and the fields stay available as attributes (``dataset``, ``file``, ``index``,
``key``, ``problem``); a :class:`DataConfigError` is also a
:class:`~torchrt.errors.FieldError` (``key``, ``expected``, ``got``). Errors cross process boundaries intact: they pickle with their
fields, and they can also be rebuilt from their message alone (what
``torchdata``'s exception wrapper does), in which case ``problem`` holds the
whole message.
"""

from __future__ import annotations

import os
from typing import Any

from torchrt.errors import FieldError, TorchrtError

__all__ = [
    "DataConfigError",
    "DataError",
    "DataNotFoundError",
    "DataStateMismatchError",
    "IndexOutOfRangeError",
    "SampleReadError",
    "ShapeMismatchError",
    "ShardCorruptError",
]


class DataError(TorchrtError, ValueError):
    """Base class: something about a dataset, a file or a sample is wrong."""

    def __init__(self, problem: str, *, dataset: str | None = None, file: str | os.PathLike[str] | None = None,
                 index: int | None = None, key: str | None = None) -> None:
        self.problem = problem
        self.dataset = dataset
        self.file = None if file is None else os.fspath(file)
        self.index = None if index is None else int(index)
        self.key = key
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.dataset is not None:
            where.append(f"dataset {self.dataset!r}")
        if self.file is not None:
            where.append(f"file {self.file!r}")
        if self.index is not None:
            where.append(f"index {self.index}")
        if self.key is not None:
            where.append(self.key)
        return ": ".join([*where, self.problem])

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.problem, dict(self.__dict__)))


def _rebuild(cls: type[DataError], problem: str, fields: dict[str, Any]) -> DataError:
    error = cls(problem)
    error.__dict__.update(fields)
    error.args = (error._message(),)
    return error


class DataConfigError(FieldError, DataError):
    """A dataset declaration (``DataSpec`` or the config's ``data`` section) or an argument is
    invalid; ``key`` names the field when one is at fault (``batch_size``)."""

    def __init__(self, problem: str, *, dataset: str | None = None, file: str | os.PathLike[str] | None = None,
                 index: int | None = None, key: str | None = None, expected: str | None = None,
                 got: Any = None) -> None:
        self.expected = expected
        self.got = got
        DataError.__init__(self, problem, dataset=dataset, file=file, index=index, key=key)

    __reduce__ = DataError.__reduce__


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset path, shard file or index file does not exist."""


class ShapeMismatchError(DataError):
    """A sample or a file does not have the shape/dtype the dataset declares."""


class IndexOutOfRangeError(DataError, IndexError):
    """A sample index outside ``[0, len(dataset))``."""


class ShardCorruptError(DataError):
    """A shard file failed its size or checksum check, or cannot be parsed."""


class SampleReadError(DataError):
    """A map-style dataset raised while reading a sample (the original is the ``__cause__``)."""


class DataStateMismatchError(DataError):
    """A pipeline state was saved for another dataset, size, seed or shuffle setting."""
