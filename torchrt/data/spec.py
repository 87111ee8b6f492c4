"""``DataSpec``: one dataset declaration, from code or from the config's ``data`` section.

Design
------
A frozen dataclass, validated on construction (:class:`DataConfigError` names
the dataset and the field), so a spec that exists is a spec that can be built.
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

    name: str
    kind: DataKind
    path: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 32
    shuffle: bool = True
    seed: int = 0
    tail: Literal["drop_tail", "pad"] = "drop_tail"
    workers: int = 2
    worker_mode: Literal["threads", "processes"] = "threads"
    prefetch: int = 2
    preview_interval: float | None = 2.0
    report_interval: float = 5.0
    transform: str | Callable[[dict[str, Any]], dict[str, Any]] | None = None
    dataset: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        name = self.name if isinstance(self.name, str) else repr(self.name)

        def bad(field: str, problem: str) -> DataConfigError:
            return DataConfigError(f"{field}: {problem}", dataset=name, file=self.path)

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", "expected a non-empty string")
        if self.kind not in KINDS:
            raise bad("kind", f"expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.path is not None and not isinstance(self.path, str):
            raise bad("path", f"expected a string, got {self.path!r}")
        if not isinstance(self.options, Mapping):
            raise bad("options", f"expected a mapping, got {self.options!r}")
        object.__setattr__(self, "options", dict(self.options))
        for field, minimum in (("batch_size", 1), ("workers", 0), ("prefetch", 0), ("seed", 0)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise bad(field, f"expected an integer >= {minimum}, got {value!r}")
        if not isinstance(self.shuffle, bool):
            raise bad("shuffle", f"expected true or false, got {self.shuffle!r}")
        if self.tail not in _TAILS:
            raise bad("tail", f"expected one of {', '.join(_TAILS)}, got {self.tail!r}")
        if self.worker_mode not in _MODES:
            raise bad("worker_mode", f"expected one of {', '.join(_MODES)}, got {self.worker_mode!r}")
        for field in ("preview_interval", "report_interval"):
            value = getattr(self, field)
            if value is None and field == "preview_interval":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise bad(field, f"expected a number >= 0{' or null' if field == 'preview_interval' else ''}, "
                                 f"got {value!r}")
        if self.transform is not None and not (isinstance(self.transform, str) or callable(self.transform)):
            raise bad("transform", f"expected 'package.module:function' or a callable, got {self.transform!r}")
        allowed = _OPTIONS[self.kind]
        if allowed is not None:
            unknown = sorted(set(self.options) - allowed)
            if unknown:
                raise bad(f"options.{unknown[0]}", f"unknown option for kind {self.kind!r} "
                                                   f"(known: {', '.join(sorted(allowed)) or 'none'})")
        if self.kind == "shards" and not self.path:
            raise bad("path", "a 'shards' dataset needs the path of its directory")
        if self.kind == "map" and self.dataset is None and not self.path:
            raise bad("path", "a 'map' dataset needs path='package.module:dataset_or_factory' (or dataset= in code)")
        if self.kind == "synthetic":
            size = self.options.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad("options.size", f"a 'synthetic' dataset needs an integer size >= 0, got {size!r}")

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
        if "drop_last" in values:
            drop = values.pop("drop_last")
            if not isinstance(drop, bool):
                raise DataConfigError(f"drop_last: expected true or false, got {drop!r}", dataset=name)
            if "tail" in values and values["tail"] != ("drop_tail" if drop else "pad"):
                raise DataConfigError("drop_last and tail disagree", dataset=name)
            values["tail"] = "drop_tail" if drop else "pad"
        values.setdefault("name", name)
        fields = {f.name for f in dataclasses.fields(cls)} - {"dataset"}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise DataConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})", dataset=name)
        if "kind" not in values:
            raise DataConfigError("kind: required (one of " + ", ".join(KINDS) + ")", dataset=name)
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
