"""Bounded cardinality: a name normaliser and a capped table of names.

A barrier or a metric named after the step (``"step-123"``) must not create a
series, a table row or a tag per step: one run that named a barrier per step
gave 1,171 TensorBoard tags. Yet ``"gpu0"`` .. ``"gpu7"`` or ``"top1"`` and
``"top5"`` are different things that only look alike. :class:`NameTable`
keeps every table of names bounded with three rules:

1. :func:`normalise` gives a name's *pattern*: every run of digits, and every
   run of 8 or more hex digits that holds a digit (hashes, uuids), becomes
   ``#`` (``"step-123"`` -> ``"step-#"``); names are cut at
   :data:`MAX_NAME_CHARS`.
2. The first :data:`VARIANTS` distinct names of a pattern keep their own name
   (``gpu0`` .. ``gpu7``, ``top1``, ``top5``); any further name of that pattern
   is kept under the pattern itself (``"step-#"``), whose series' min/max then
   show the spread. A name that changes every step thus costs at most
   ``VARIANTS + 1`` entries, never one per step.
3. At most ``cap`` names in all; any further one is folded into :data:`OTHER`
   and counted (``folded``), with one warning per table.

The decisions depend only on the order names arrive in, so a table rebuilt
from the same names (a replay) decides the same.
"""

from __future__ import annotations

import logging
import re

from torchrt.errors import FieldError

__all__ = ["MAX_NAME_CHARS", "NameTable", "OTHER", "VARIANTS", "normalise"]

logger = logging.getLogger(__name__)

OTHER = "other"
MAX_NAME_CHARS = 120
VARIANTS = 8
_VARIABLE = re.compile(r"[0-9a-fA-F]{8,}|[0-9]+")


def normalise(name: str) -> str:
    """``name`` with its variable parts replaced by ``#`` (see the module docstring)."""
    return _VARIABLE.sub(_replace, name[:MAX_NAME_CHARS])


def _replace(match: re.Match[str]) -> str:
    text = match.group()
    return "#" if any(c.isdigit() for c in text) else text


class NameTable:
    """At most ``cap`` names, in the order first seen, plus :data:`OTHER` (see the module docstring)."""

    def __init__(self, cap: int, what: str) -> None:
        if cap < 1:
            raise FieldError(f"expected a number >= 1, got {cap!r}", key=f"cap of {what}", expected=">= 1", got=cap)
        self.cap = cap
        self.what = what
        self.folded = 0  # names mapped to OTHER because the table was full
        self._names: dict[str, None] = {}  # insertion-ordered set
        self._variants: dict[str, int] = {}  # pattern -> names of it kept as themselves

    def key(self, name: str) -> str:
        """The name ``name`` is kept under: itself, its pattern, or :data:`OTHER`."""
        name = name[:MAX_NAME_CHARS]
        if name in self._names:
            return name
        pattern = normalise(name)
        if pattern in self._names:
            return pattern
        key = name if self._variants.get(pattern, 0) < VARIANTS else pattern
        if len(self._names) < self.cap:
            self.adopt(key)
            return key
        if not self.folded:
            logger.warning("more than %d distinct %s: %r and any further ones are kept as %r",
                           self.cap, self.what, name, OTHER)
        self.folded += 1
        return OTHER

    def adopt(self, key: str) -> None:
        """Take ``key`` as known (also when restoring a table in its original order)."""
        if key in self._names or len(self._names) >= self.cap:
            return
        self._names[key] = None
        pattern = normalise(key)
        if pattern != key:
            self._variants[pattern] = self._variants.get(pattern, 0) + 1

    def __len__(self) -> int:
        return len(self._names)
