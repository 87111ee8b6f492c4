"""YAML job configs: strict loading into one frozen dataclass per section.

A config file is a mapping of sections (``job``, ``nodes``, ``rendezvous``,
``entrypoint``); each section is a mapping of keys. Loading is strict: an
unknown section or key, a value of the wrong type (a boolean is never an
integer; an integer is accepted where a number is expected), a value out of
range, a missing required key or a duplicated key raises :class:`ConfigError`,
whose message names the file, the dotted key (``nodes.max``) and what was
expected, e.g.::

    configs/x.yaml: nodes.max: expected an integer >= nodes.min (2), got 1

A key given as ``null`` (or left empty) takes its default.

Design: :class:`JobConfig`'s fields are the registry of sections. Each field's
type is a section dataclass with a ``parse(section: Section)`` classmethod that
reads its keys through the typed, range-checking getters of :class:`Section`;
the section's accepted keys are its dataclass fields. Adding a section is
therefore one dataclass plus one field line in :class:`JobConfig`.

Overrides (``torchrt run CONFIG --set section.key=value``) are applied to the
parsed YAML before validation, so they are checked exactly like the file; the
value is parsed with ``yaml.safe_load`` (``nodes.max=2`` is an integer,
``entrypoint.args=[a, b]`` a list).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from torchrt.checkpoint.errors import CheckpointConfigError
from torchrt.checkpoint.spec import CheckpointSpec
from torchrt.data.errors import DataConfigError
from torchrt.data.spec import DataSpec, parse_data_section
from torchrt.protocol import parse_endpoint
from torchrt.rendezvous.options import BACKENDS, RendezvousOptions

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_ENV",
    "CONFIG_OVERRIDES_ENV",
    "CheckpointSection",
    "ConfigError",
    "DataSection",
    "EntrypointSection",
    "JobConfig",
    "JobSection",
    "NodesSection",
    "RendezvousSection",
    "Section",
    "config_from_environment",
    "load_config",
]

_REQUIRED: Any = object()
_RDZV = RendezvousOptions()  # the rendezvous section's defaults are the handler's


class ConfigError(ValueError):
    """A config file or override is invalid; the message names file, key and expectation."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem


def _show(value: Any) -> str:
    """A value as YAML users write it (``true``, ``null``, ``"text"``) plus its kind."""
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string",
             list: "list", dict: "mapping", type(None): "null"}
    kind = kinds.get(type(value), type(value).__name__)
    text = json.dumps(value, default=str)
    return text if kind in ("integer", "number", "string", "null") else f"{text} ({kind})"


class Section:
    """The raw mapping of one section, read through typed getters that raise ConfigError."""

    def __init__(self, file: str, name: str, raw: Mapping[str, Any], overridden: Iterable[str] = ()) -> None:
        self.file = file
        self.name = name
        self.raw = raw
        self.overridden = set(overridden)

    @property
    def config_dir(self) -> Path:
        return Path(self.file).resolve().parent

    def key(self, key: str) -> str:
        dotted = f"{self.name}.{key}"
        return f"{dotted} (from --set)" if dotted in self.overridden else dotted

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(key), problem)

    def expected(self, key: str, what: str) -> ConfigError:
        return self.error(key, f"expected {what}, got {_show(self.raw.get(key))}")

    def get(self, key: str, default: Any) -> Any:
        value = self.raw.get(key)
        if value is not None:
            return value
        if default is _REQUIRED:
            raise self.error(key, "required key is missing")
        return default

    def string(self, key: str, default: Any = None) -> Any:
        """A non-empty string, or ``default`` (``_REQUIRED``: raise when missing)."""
        value = self.get(key, default)
        if self.raw.get(key) is not None and (not isinstance(value, str) or not value):
            raise self.expected(key, "a non-empty string")
        return value

    def integer(self, key: str, default: Any, minimum: int, bound: str | None = None) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.expected(key, f"an integer >= {f'{bound} ({minimum})' if bound else minimum}")
        return value

    def number(self, key: str, default: float, *, ge: float | None = None, gt: float | None = None,
               bound: str | None = None) -> float:
        value = self.get(key, default)
        limit, op = (gt, ">") if gt is not None else (ge, ">=")
        what = "a number" if limit is None else f"a number {op} {f'{bound} ({limit:g})' if bound else f'{limit:g}'}"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.expected(key, what)
        if (gt is not None and not value > gt) or (ge is not None and not value >= ge):
            raise self.expected(key, what)
        return float(value)

    def optional_bool(self, key: str) -> bool | None:
        value = self.raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.expected(key, "true, false or null")
        return value

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        options = tuple(choices)
        value = self.get(key, default)
        if value not in options:
            raise self.expected(key, "one of " + ", ".join(json.dumps(c) for c in options))
        return str(value)

    def strings(self, key: str) -> list[str]:
        """A list of strings; integers and numbers are turned into strings (``[--epochs, 3]``)."""
        value = self.get(key, [])
        if not isinstance(value, list) or not all(_scalar(v) for v in value):
            raise self.expected(key, "a list of strings")
        return [str(v) for v in value]

    def string_map(self, key: str) -> dict[str, str]:
        """A mapping of strings to strings; integer and number values become strings."""
        value = self.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and _scalar(v) for k, v in value.items()):
            raise self.expected(key, "a mapping of strings to strings")
        return {k: str(v) for k, v in value.items()}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _check_conf_value(section: Section, key: str, value: str | None) -> None:
    """Refuse a string torchrun cannot carry in ``--rdzv-conf k=v,k=v`` (commas, edge spaces)."""
    if value is not None and ("," in value or value != value.strip()):
        raise section.expected(key, "a string without commas or leading/trailing spaces")


# ---------------------------------------------------------------- sections
@dataclasses.dataclass(frozen=True)
class JobSection:
    """``job``: what the run is called and where its record goes."""

    name: str
    run_id: str
    run_dir: str
    max_restarts: int = 0

    @classmethod
    def parse(cls, s: Section) -> JobSection:
        name = s.string("name", _REQUIRED)
        run_id = s.string("run_id", name)
        runs_dir = os.environ.get("TORCHRT_RUNS_DIR", "torchrt_runs")
        run_dir = s.string("run_dir", f"{runs_dir}/{run_id}")
        _check_conf_value(s, "run_dir", run_dir)
        return cls(name=name, run_id=run_id, run_dir=run_dir, max_restarts=s.integer("max_restarts", 0, 0))


@dataclasses.dataclass(frozen=True)
class NodesSection:
    """``nodes``: how many nodes (elastic between min and max) and workers per node."""

    min: int = 1
    max: int = 1
    nproc_per_node: int = 1
    monitor_interval: float = 0.1

    @classmethod
    def parse(cls, s: Section) -> NodesSection:
        low = s.integer("min", 1, 1)
        return cls(min=low, max=s.integer("max", low, low, bound="nodes.min"),
                   nproc_per_node=s.integer("nproc_per_node", 1, 1),
                   monitor_interval=s.number("monitor_interval", 0.1, gt=0))


@dataclasses.dataclass(frozen=True)
class RendezvousSection:
    """``rendezvous``: where the coordinator listens and the ``--rdzv-conf`` timings."""

    endpoint: str = "127.0.0.1:29400"
    token: str | None = None
    backend: str = _RDZV.pg_backend
    last_call_timeout: float = _RDZV.last_call_timeout
    rejoin_timeout: float = _RDZV.rejoin_timeout
    join_timeout: float = _RDZV.join_timeout
    heartbeat_interval: float = _RDZV.heartbeat_interval
    heartbeat_timeout: float = _RDZV.heartbeat_timeout
    is_host: bool | None = None

    @classmethod
    def parse(cls, s: Section) -> RendezvousSection:
        endpoint = s.string("endpoint", "127.0.0.1:29400")
        try:
            host, _ = parse_endpoint(endpoint)
        except ValueError:
            host = ""
        if not host:
            raise s.expected("endpoint", "HOST:PORT")
        token = s.string("token")
        _check_conf_value(s, "token", token)
        interval = s.number("heartbeat_interval", cls.heartbeat_interval, gt=0)
        return cls(endpoint=endpoint, token=token,
                   backend=s.choice("backend", BACKENDS, cls.backend),
                   last_call_timeout=s.number("last_call_timeout", cls.last_call_timeout, ge=0),
                   rejoin_timeout=s.number("rejoin_timeout", cls.rejoin_timeout, ge=0),
                   join_timeout=s.number("join_timeout", cls.join_timeout, gt=0),
                   heartbeat_interval=interval,
                   heartbeat_timeout=s.number("heartbeat_timeout", cls.heartbeat_timeout, gt=interval,
                                              bound="rendezvous.heartbeat_interval"),
                   is_host=s.optional_bool("is_host"))


@dataclasses.dataclass(frozen=True)
class EntrypointSection:
    """``entrypoint``: the training script (or module) torchrun starts, its args and env.

    A relative ``script`` is looked up next to the config file first, then in
    the current directory; it is stored as an absolute path and must exist.
    """

    script: str | None = None
    module: str | None = None
    args: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, s: Section) -> EntrypointSection:
        script, module = s.string("script"), s.string("module")
        if script and module:
            raise ConfigError(s.file, "entrypoint", "expected exactly one of script or module, got both")
        if module is not None and not all(part.isidentifier() for part in module.split(".")):
            raise s.expected("module", "a dotted Python module name")
        if module is None:
            if script is None:
                raise s.error("script", "required key is missing (or give entrypoint.module instead)")
            script = str(_find_script(s, script))
        return cls(script=script, module=module, args=s.strings("args"), env=s.string_map("env"))


def _find_script(s: Section, script: str) -> Path:
    path = Path(script).expanduser()
    candidates = [path] if path.is_absolute() else list(dict.fromkeys([s.config_dir / path, Path.cwd() / path]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise s.expected("script", "an existing file (looked for " + ", ".join(str(c) for c in candidates) + ")")


# ---------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class DataSection:
    """``data``: datasets by name; each entry is a :class:`torchrt.data.DataSpec` mapping
    (kind, path, options, batch_size, shuffle, seed, tail, workers, worker_mode, ...)."""

    datasets: tuple[DataSpec, ...] = ()
    any_keys: typing.ClassVar[bool] = True  # the keys are dataset names, not fixed fields

    @classmethod
    def parse(cls, s: Section) -> DataSection:
        try:
            return cls(tuple(parse_data_section(dict(s.raw))))
        except DataConfigError as e:
            raise s.error(e.dataset or "(section)", e.problem) from None


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """``checkpoint``: a :class:`torchrt.checkpoint.CheckpointSpec` (dir, every_steps,
    every_seconds, keep, async_save, writer_threads, on_error, when_busy); absent: None."""

    spec: CheckpointSpec | None = None
    any_keys: typing.ClassVar[bool] = True  # CheckpointSpec checks its own keys

    @classmethod
    def parse(cls, s: Section) -> CheckpointSection:
        if not s.raw:
            return cls(None)
        accepted = [f.name for f in dataclasses.fields(CheckpointSpec)]
        for key in s.raw:
            if key not in accepted:
                raise s.error(str(key), "unknown key; accepted keys: " + ", ".join(accepted))
        if "dir" not in s.raw:
            raise s.error("dir", "required key is missing")
        try:
            return cls(CheckpointSpec(**{k: v for k, v in s.raw.items() if v is not None}))
        except CheckpointConfigError as e:  # "checkpoint.KEY: expected ..."
            key, _, problem = str(e).partition(": ")
            raise s.error(key.removeprefix("checkpoint."), problem) from None


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """A whole config file. Each field is a section: add a section by adding a field."""

    job: JobSection
    nodes: NodesSection
    rendezvous: RendezvousSection
    entrypoint: EntrypointSection
    data: DataSection
    checkpoint: CheckpointSection
    path: str = ""

    @classmethod
    def sections(cls) -> dict[str, type]:
        """Section name -> section dataclass, in file order."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "path"}


# ---------------------------------------------------------------- loading
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _parse_yaml(file: str, text: str, key: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(file, key, f"expected valid YAML, got an error{where}: {problem}") from None


def _apply_overrides(file: str, raw: dict[str, Any], overrides: Iterable[str]) -> set[str]:
    """Set ``section.key=value`` overrides into ``raw``; return the dotted keys set."""
    done: set[str] = set()
    for text in overrides:
        dotted, eq, value_text = text.partition("=")
        parts = dotted.strip().split(".")
        if not eq or len(parts) != 2 or not all(parts):
            raise ConfigError(file, f"--set {text}", "expected section.key=value, e.g. nodes.max=2")
        section, key = parts
        value = _parse_yaml(file, value_text, f"--set {text}")
        if not isinstance(raw.get(section), dict):
            if raw.get(section) is not None:
                raise ConfigError(file, section, f"expected a mapping of keys, got {_show(raw[section])}")
            raw[section] = {}
        raw[section][key] = value
        done.add(f"{section}.{key}")
    return done


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> JobConfig:
    """Load, override and validate the YAML config at ``path``; raise ConfigError if invalid.

    ``overrides`` are ``section.key=value`` strings applied before validation.
    A relative ``entrypoint.script`` resolves against the config file's
    directory when the file exists there, else against the current directory;
    the result is absolute and must exist.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "(file)", "expected an existing config file, but it does not exist") from None
    except OSError as e:
        raise ConfigError(file, "(file)", f"expected a readable config file, got {e.strerror or e}") from None
    raw = _parse_yaml(file, text, "(file)")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file, "(top level)", f"expected a mapping of sections, got {_show(raw)}")
    sections = JobConfig.sections()
    overridden = _apply_overrides(file, raw, overrides)
    for name in raw:
        if name not in sections:
            raise ConfigError(file, str(name), "unknown section; accepted sections: " + ", ".join(sections))
    parsed: dict[str, Any] = {}
    for name, cls in sections.items():
        body = raw.get(name)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(file, name, f"expected a mapping of keys, got {_show(body)}")
        accepted = [f.name for f in dataclasses.fields(cls)]
        for key in body:
            if key not in accepted and not getattr(cls, "any_keys", False):
                section = Section(file, name, body, overridden)
                raise section.error(str(key), "unknown key; accepted keys: " + ", ".join(accepted))
        parsed[name] = cls.parse(Section(file, name, body, overridden))
    config = JobConfig(**parsed, path=file)
    logger.debug("loaded config %s: %s", file, config)
    return config


CONFIG_ENV = "TORCHRT_CONFIG"
CONFIG_OVERRIDES_ENV = "TORCHRT_CONFIG_SET"


def config_environment(path: str | os.PathLike[str], overrides: Iterable[str]) -> dict[str, str]:
    """What ``torchrt run`` exports so workers can read the same config (e.g. its datasets)."""
    return {CONFIG_ENV: str(Path(path).resolve()), CONFIG_OVERRIDES_ENV: json.dumps(list(overrides))}


def config_from_environment() -> JobConfig | None:
    """The config this process was started with by ``torchrt run``, or None outside of it."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return None
    return load_config(path, json.loads(os.environ.get(CONFIG_OVERRIDES_ENV, "[]")))
