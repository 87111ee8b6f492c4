"""One typed validation path for every setting torchrt reads.

The YAML config (:mod:`torchrt.config`) and its ``--set`` overrides,
``--rdzv-conf`` (:mod:`torchrt.rendezvous.options`), :class:`~torchrt.data.DataSpec`
and :class:`~torchrt.checkpoint.CheckpointSpec` all check their values with
the checks defined here, so a number is a number, a timeout is finite and
positive, and a message reads the same wherever the value came from::

    join_timeout: expected a finite number > 0, got inf

A check is a small frozen object: ``check(key, value)`` returns the value
(numbers as ``float``, integers as ``int``) or raises
:class:`~torchrt.errors.FieldError`, which carries ``key``, ``expected`` and
``got``; ``check.coerce(key, text)`` first turns the text of a command line
(``"1.5"``, ``"true"``) into the value to check, which is what ``--rdzv-conf``
needs. A value is *typed*: ``true`` is never an integer, ``"2"`` is never a
number; an integer is accepted where a number is expected.

Dataclasses declare their checks next to their fields
(``keep: int = setting(3, Integer(ge=1))``) and call :func:`check_fields` in
``__post_init__``; each layer converts the ``FieldError`` into its own config
error with ``FieldError.like`` (see :mod:`torchrt.errors`).

Why not pydantic: three input shapes (typed YAML values, where ``true`` must
not pass as ``1``; command-line text, where ``"1.5"`` must; dataclasses built
in code) would need both its strict and lax modes plus custom validators for
the cross-field bounds, and its messages would have to be translated back
into ours (``expected an integer >= nodes.min (2), got 1``) type by type;
that translation is as long as these checks, and every torchrun agent would
import a compiled dependency for a dozen settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from torchrt.errors import EndpointError, FieldError
from torchrt.protocol import parse_endpoint

__all__ = [
    "Boolean",
    "Check",
    "Choice",
    "Endpoint",
    "Integer",
    "Number",
    "Text",
    "TextList",
    "TextMap",
    "check_fields",
    "checks_of",
    "mismatch",
    "missing_key",
    "setting",
    "show",
    "unknown_key",
]

_TRUE = ("1", "true", "t", "yes", "y")  # what torch's RendezvousParameters.get_as_bool accepts
_FALSE = ("0", "false", "f", "no", "n")


def show(value: Any) -> str:
    """A value as a YAML user writes it (``true``, ``null``, ``"text"``, ``inf``) plus its kind
    where the kind is not obvious (``true (boolean)``, ``[1] (list)``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string",
             list: "list", dict: "mapping", type(None): "null"}
    kind = kinds.get(type(value), type(value).__name__)
    text = json.dumps(value, default=repr)
    return text if kind in ("integer", "number", "string", "null") else f"{text} ({kind})"


def mismatch(key: str, expected: str, got: Any, *, shown: str | None = None) -> FieldError:
    """``KEY: expected EXPECTED, got GOT``; ``shown`` replaces ``show(got)`` (e.g. raw text)."""
    return FieldError(f"expected {expected}, got {show(got) if shown is None else shown}",
                      key=key, expected=expected, got=got)


def missing_key(key: str, hint: str = "") -> FieldError:
    """``KEY: required key is missing`` (``hint`` follows in parentheses)."""
    return FieldError("required key is missing" + (f" ({hint})" if hint else ""), key=key)


def unknown_key(key: str, accepted: Iterable[str]) -> FieldError:
    """``KEY: unknown key; accepted keys: a, b, c``."""
    return FieldError("unknown key; accepted keys: " + ", ".join(accepted), key=key)


def _join(options: Iterable[str]) -> str:
    names = list(options)
    return " or ".join(names) if len(names) <= 2 else "one of " + ", ".join(names)


@dataclasses.dataclass(frozen=True)
class Check:
    """Base of the checks: ``None`` passes when ``optional``; other values go to :meth:`_check`."""

    optional: bool = dataclasses.field(default=False, kw_only=True)

    @property
    def expected(self) -> str:
        return self._expected() + self._or_null

    @property
    def _or_null(self) -> str:
        return " or null" if self.optional else ""

    def __call__(self, key: str, value: Any, *, shown: str | None = None) -> Any:
        if value is None and self.optional:
            return None
        return self._check(key, value, shown)

    def coerce(self, key: str, value: Any) -> Any:
        """Check ``value``; a string (a command line's text) is first read as this check's type."""
        if isinstance(value, str):
            return self(key, self._from_text(key, value), shown=value)
        return self(key, value)

    def _from_text(self, key: str, text: str) -> Any:
        return text

    def _expected(self) -> str:
        raise NotImplementedError

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        raise NotImplementedError

    def _bad(self, key: str, value: Any, shown: str | None, expected: str | None = None) -> FieldError:
        return mismatch(key, expected or self.expected, value, shown=shown)


@dataclasses.dataclass(frozen=True)
class Number(Check):
    """A finite number (an integer is accepted) within the given limits, returned as ``float``.

    ``bound`` names where a limit comes from: ``Number(gt=0.5, bound="heartbeat_interval")``
    expects ``a number > heartbeat_interval (0.5)``.
    """

    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    bound: str | None = None
    integer: ClassVar[bool] = False

    def _expected(self, finite: bool = False) -> str:
        kind = "an integer" if self.integer else ("a finite number" if finite else "a number")
        if self.ge is not None and self.le is not None:
            return f"{kind} in {self.ge:g}..{self.le:g}"
        for op, limit in ((">", self.gt), (">=", self.ge), ("<=", self.le)):
            if limit is not None:
                return f"{kind} {op} {f'{self.bound} ({limit:g})' if self.bound else f'{limit:g}'}"
        return kind

    def _from_text(self, key: str, text: str) -> Any:
        try:
            return int(text) if self.integer else float(text)
        except ValueError:
            raise self._bad(key, text, text) from None

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            raise self._bad(key, value, shown)
        if not self.integer:
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
            if not math.isfinite(number):
                raise self._bad(key, value, shown, self._expected(finite=True) + self._or_null)
            value = number
        if (self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge) \
                or (self.le is not None and not value <= self.le):
            raise self._bad(key, value, shown)
        return value


class Integer(Number):
    """An integer (never a boolean, never ``1.0``) within the given limits."""

    integer: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class Boolean(Check):
    """``true`` or ``false``; as text also what torch's ``get_as_bool`` accepts (``1``, ``yes``...)."""

    def _expected(self) -> str:
        return "true, false" if self.optional else "true or false"

    def _from_text(self, key: str, text: str) -> Any:
        word = text.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise self._bad(key, text, text)

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        if not isinstance(value, bool):
            raise self._bad(key, value, shown)
        return value


@dataclasses.dataclass(frozen=True)
class Choice(Check):
    """One of a few strings."""

    choices: tuple[str, ...] = ()

    def _expected(self) -> str:
        return _join(self.choices)

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        if not isinstance(value, str) or value not in self.choices:
            raise self._bad(key, value, shown)
        return value


@dataclasses.dataclass(frozen=True)
class Text(Check):
    """A string, non-empty unless ``empty``. ``plain``: also without commas or leading/trailing
    spaces, so it can travel in torchrun's ``--rdzv-conf k=v,k=v``."""

    empty: bool = False
    plain: bool = False

    def _expected(self) -> str:
        kind = "a string" if self.empty else "a non-empty string"
        return kind + (" without commas or leading/trailing spaces" if self.plain else "")

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        if not isinstance(value, str) or (not value and not self.empty) or \
                (self.plain and ("," in value or value != value.strip())):
            raise self._bad(key, value, shown)
        return value


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class TextList(Check):
    """A list of strings; integers and numbers become strings (``[--epochs, 3]``)."""

    def _expected(self) -> str:
        return "a list of strings"

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        if not isinstance(value, list) or not all(_scalar(v) for v in value):
            raise self._bad(key, value, shown)
        return [str(v) for v in value]


@dataclasses.dataclass(frozen=True)
class TextMap(Check):
    """A mapping of strings to strings; integer and number values become strings."""

    def _expected(self) -> str:
        return "a mapping of strings to strings"

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        if not isinstance(value, dict) or not all(isinstance(k, str) and _scalar(v) for k, v in value.items()):
            raise self._bad(key, value, shown)
        return {k: str(v) for k, v in value.items()}


@dataclasses.dataclass(frozen=True)
class Endpoint(Check):
    """``HOST:PORT`` as :func:`torchrt.protocol.parse_endpoint` reads it (IPv6 in brackets)."""

    def _expected(self) -> str:
        return "HOST:PORT"

    def _check(self, key: str, value: Any, shown: str | None) -> Any:
        if not isinstance(value, str) or not value:
            raise self._bad(key, value, shown, "a non-empty string")
        try:
            host, _ = parse_endpoint(value)
        except EndpointError as e:
            error = self._bad(key, value, shown)
            raise FieldError(f"{error.problem} ({e.reason})", key=key, expected=error.expected, got=value) from None
        if not host:
            raise self._bad(key, value, shown)
        return value


def setting(default: Any = dataclasses.MISSING, check: Check | None = None, *, doc: str = "",
            default_doc: str | None = None, **field: Any) -> Any:
    """A dataclass field whose value :func:`check_fields` checks with ``check``; ``doc`` (one
    sentence) and ``default_doc`` (a default computed elsewhere, e.g. ``"name"``) are what the
    config reference (:mod:`torchrt.config_docs`) shows next to the check's expectation."""
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc, "default_doc": default_doc},
                             **field)


def check_fields(obj: Any) -> None:
    """Check every field of the dataclass ``obj`` declared with :func:`setting`; store what the
    check returns (``2`` given for a number becomes ``2.0``). Raises ``FieldError``."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            value = check(f.name, getattr(obj, f.name))
            if value is not getattr(obj, f.name):
                object.__setattr__(obj, f.name, value)


def checks_of(cls: type) -> Mapping[str, Check]:
    """Field name -> check of a dataclass declared with :func:`setting`."""
    return {f.name: f.metadata["check"] for f in dataclasses.fields(cls) if f.metadata.get("check")}
