"""``DataSpec``: one dataset declaration, from code or from the config's ``data`` section.

Design
------
A frozen dataclass, validated on construction with the :mod:`torchrt.validation`
check declared next to each field (:class:`DataConfigError` names the dataset
and carries the field's key and expectation), so a spec that exists is a spec
that can be built.
The same object comes from code (``DataSpec(name="digits", kind="digits",
batch_size=64)``) or from a mapping (:meth:`DataSpec.from_mapping`, what the
YAML ``data`` section holds); unknown keys and unknown ``options`` for the kind
are refused rather than ignored.

Kinds and their ``options``:

============  ===========================================================  ==============================
kind          path                                                          options
============  ===========================================================  ==============================
``map``       ``"package.module:attr"``: a map-style dataset, or a factory  passed to the factory as kwargs
              called with ``options`` (or pass ``dataset=`` in code)
``shards``    the dataset directory (written by ``ShardWriter``)            ``verify``: lazy | eager | off
``digits``    (none) scikit-learn's digits                                   (none)
``synthetic`` (none)                                                         ``size`` (required), ``shape``,
                                                                             ``num_classes``, ``seed``
============  ===========================================================  ==============================
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from torchrt.data.errors import DataConfigError
from torchrt.errors import FieldError
from torchrt.validation import (Boolean, Choice, Integer, Number, Text, check_fields, mismatch, missing_key, setting,
                                unknown_key)

__all__ = ["KINDS", "DataKind", "DataSpec", "parse_data_section", "resolve_object"]

DataKind = Literal["map", "shards", "digits", "synthetic"]
KINDS: tuple[str, ...] = get_args(DataKind)
_OPTIONS: dict[str, frozenset[str] | None] = {
    "map": None,  # anything: the factory's keyword arguments
    "shards": frozenset({"verify"}),
    "digits": frozenset(),
    "synthetic": frozenset({"size", "shape", "num_classes", "seed"}),
}
_TAILS = ("drop_tail", "pad")
_MODES = ("threads", "processes")


def resolve_object(reference: str, *, dataset: str, what: str) -> Any:
    """Import ``"package.module:attr"`` (attr may be dotted)."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise DataConfigError(f"{what} must look like 'package.module:name', got {reference!r}", dataset=dataset)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise DataConfigError(f"{what} {reference!r} cannot be imported: {type(e).__name__}: {e}",
                              dataset=dataset) from e
    return obj


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A dataset and how each rank's pipeline reads it (see the module docstring for kinds)."""

    name: str = setting(check=Text(), default_doc="the key under `data`", doc="the dataset's name")
    kind: DataKind = setting(check=Choice(KINDS), doc="`map` (path `package.module:attr`), `shards` (a directory "
                                                      "written by `ShardWriter`), `digits`, `synthetic`")
    path: str | None = setting(None, Text(optional=True), doc="where the data is (per kind, docs/data.md)")
    options: Mapping[str, Any] = setting(check=None, default_factory=dict, doc="kind-specific options (docs/data.md)")
    batch_size: int = setting(32, Integer(ge=1), doc="samples per rank per step")
    shuffle: bool = setting(True, Boolean(), doc="a new order each epoch, from `(seed, epoch)`")
    seed: int = setting(0, Integer(ge=0), doc="seed of the epoch order")
    tail: Literal["drop_tail", "pad"] = setting("drop_tail", Choice(_TAILS),
                                                doc="the last, short step: dropped, or padded (padding rows are "
                                                    "masked: target -100); `drop_last: true/false` also works")
    workers: int = setting(2, Integer(ge=0), doc="batch-level map workers (0: in the training thread)")
    worker_mode: Literal["threads", "processes"] = setting("threads", Choice(_MODES), doc="what the workers are")
    prefetch: int = setting(2, Integer(ge=0), doc="batches read ahead")
    preview_interval: float | None = setting(2.0, Number(ge=0, optional=True),
                                             doc="seconds between live sample previews per rank (null or 0: off)")
    report_interval: float = setting(5.0, Number(ge=0), doc="seconds between progress and timing reports")
    transform: str | Callable[[dict[str, Any]], dict[str, Any]] | None = setting(
        None, check=None, doc="`package.module:function` applied to each batch in the workers")
    dataset: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        name = self.name if isinstance(self.name, str) else repr(self.name)
        try:
            check_fields(self)
            self._check_kind()
        except FieldError as e:
            raise DataConfigError.like(e, dataset=name, file=self.path if isinstance(self.path, str) else None) \
                from None

    def _check_kind(self) -> None:
        """What the field checks cannot see: options, transform, and what each kind needs."""
        if not isinstance(self.options, Mapping):
            raise mismatch("options", "a mapping", self.options)
        object.__setattr__(self, "options", dict(self.options))
        if self.transform is not None and not (isinstance(self.transform, str) or callable(self.transform)):
            raise mismatch("transform", "'package.module:function' or a callable", self.transform)
        allowed = _OPTIONS[self.kind]
        if allowed is not None:
            unknown = sorted(set(self.options) - allowed)
            if unknown:
                raise FieldError(f"unknown option for kind {self.kind!r} (known: {', '.join(sorted(allowed)) or 'none'})",
                                 key=f"options.{unknown[0]}")
        if self.kind == "shards" and not self.path:
            raise FieldError("a 'shards' dataset needs the path of its directory", key="path")
        if self.kind == "map" and self.dataset is None and not self.path:
            raise FieldError("a 'map' dataset needs path='package.module:dataset_or_factory' (or dataset= in code)",
                             key="path")
        if self.kind == "synthetic":
            if self.options.get("size") is None:
                raise missing_key("options.size", "a 'synthetic' dataset needs its size")
            Integer(ge=0)("options.size", self.options["size"])

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, default_name: str | None = None) -> DataSpec:
        """Build from a config mapping; unknown keys are refused.

        A key given as null takes its default (as everywhere in the config); ``preview_interval: 0``
        turns previews off. ``drop_last: true|false`` is accepted for ``tail: drop_tail|pad``.
        """
        if not isinstance(raw, Mapping):
            raise DataConfigError(f"a dataset entry must be a mapping, got {raw!r}", dataset=default_name)
        values = dict(raw)
        name = values.get("name", default_name)
        try:
            if "drop_last" in values:
                drop = Boolean()("drop_last", values.pop("drop_last"))
                if "tail" in values and values["tail"] != ("drop_tail" if drop else "pad"):
                    raise FieldError("drop_last and tail disagree", key="drop_last")
                values["tail"] = "drop_tail" if drop else "pad"
            values.setdefault("name", name)
            fields = [f.name for f in dataclasses.fields(cls) if f.name != "dataset"]
            unknown = sorted(set(values) - set(fields))
            if unknown:
                raise unknown_key(unknown[0], sorted(fields))
            if "kind" not in values:
                raise missing_key("kind", "one of " + ", ".join(KINDS))
        except FieldError as e:
            raise DataConfigError.like(e, dataset=name) from None
        values = {k: v for k, v in values.items() if v is not None}  # null takes the default (as in config.py)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The declaration as JSON-able data (a callable transform shows as its qualified name)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "dataset"}
        if callable(self.transform):
            out["transform"] = f"{getattr(self.transform, '__module__', '?')}:" \
                               f"{getattr(self.transform, '__qualname__', repr(self.transform))}"
        out["options"] = dict(self.options)
        return out


def parse_data_section(section: Any) -> list[DataSpec]:
    """The config's ``data`` section: a list of entries, or a mapping ``{name: entry}``; names must be unique."""
    if section is None:
        return []
    if isinstance(section, Mapping):
        specs = [DataSpec.from_mapping(entry if entry is not None else {}, default_name=str(name))
                 for name, entry in section.items()]
    elif isinstance(section, list):
        specs = [DataSpec.from_mapping(entry) for entry in section]
    else:
        raise DataConfigError(f"the data section must be a list or a mapping, got {type(section).__name__}")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise DataConfigError("declared twice", dataset=spec.name)
        seen.add(spec.name)
    return specs
