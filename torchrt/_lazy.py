"""Lazy package exports: ``from torchrt.checkpoint import CheckpointManager`` without importing
every submodule (and torch's heavy pieces) when only one light name is needed.

A package lists ``name -> submodule`` once and installs the returned ``__getattr__`` and
``__dir__`` (PEP 562); the submodule is imported on first access of one of its names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any],
                                                                  Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` exporting ``exports``."""
    names = sorted(exports)

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def dir_() -> list[str]:
        return names

    return names, getattr_, dir_
