"""Bounded cardinality: a name normaliser and a capped table of names.

A barrier or a metric named after the step (``"step-123"``) must not create a
series, a table row or a tag per step: one run that named a barrier per step
gave 1,171 TensorBoard tags. Two rules keep every table of names bounded:

1. :func:`normalise` replaces what varies by nature with ``#``: every run of
   digits, and every run of 8 or more hex digits that holds a digit (hashes,
   uuids). ``"step-123"`` and ``"step-124"`` are both ``"step-#"``;
   ``"gpu0/util"`` .. ``"gpu7/util"`` are ``"gpu#/util"``, whose series'
   min/max/mean then show the spread over the GPUs. Names are cut at
   :data:`MAX_NAME_CHARS`.
2. :class:`NameTable` holds at most ``cap`` normalised names; any further name
   is folded into the one name :data:`OTHER` and counted (``folded``), with one
   warning per table.
"""

from __future__ import annotations

import logging
import re

from torchrt.errors import FieldError

__all__ = ["MAX_NAME_CHARS", "NameTable", "OTHER", "normalise"]

logger = logging.getLogger(__name__)

OTHER = "other"
MAX_NAME_CHARS = 120
_VARIABLE = re.compile(r"[0-9a-fA-F]{8,}|[0-9]+")


def normalise(name: str) -> str:
    """``name`` with its variable parts replaced by ``#`` (see the module docstring)."""
    return _VARIABLE.sub(_replace, name[:MAX_NAME_CHARS])


def _replace(match: re.Match[str]) -> str:
    text = match.group()
    return "#" if any(c.isdigit() for c in text) else text


class NameTable:
    """At most ``cap`` distinct normalised names, in the order first seen, plus :data:`OTHER`."""

    def __init__(self, cap: int, what: str) -> None:
        if cap < 1:
            raise FieldError(f"expected a number >= 1, got {cap!r}", key=f"cap of {what}", expected=">= 1", got=cap)
        self.cap = cap
        self.what = what
        self.folded = 0  # names mapped to OTHER because the table was full
        self._names: dict[str, None] = {}  # insertion-ordered set

    def key(self, name: str) -> str:
        """The name ``name`` is kept under: its normalised form, or :data:`OTHER` once the table is full."""
        key = normalise(name)
        if key in self._names:
            return key
        if len(self._names) < self.cap:
            self._names[key] = None
            return key
        if not self.folded:
            logger.warning("more than %d distinct %s (after normalising): %r and any further ones are "
                           "kept as %r", self.cap, self.what, name, OTHER)
        self.folded += 1
        return OTHER

    def adopt(self, key: str) -> None:
        """Take ``key`` as already known (restoring a table in its original order)."""
        if key != OTHER and key not in self._names and len(self._names) < self.cap:
            self._names[key] = None

    def __len__(self) -> int:
        return len(self._names)
