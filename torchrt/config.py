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
reads its keys with :meth:`Section.value` and a :mod:`torchrt.validation`
check; the section's accepted keys are its dataclass fields. Adding a section
is therefore one dataclass plus one field line in :class:`JobConfig`. The
``rendezvous`` keys use the checks and defaults of ``--rdzv-conf``
(:class:`~torchrt.rendezvous.options.RendezvousOptions`), ``data`` entries and
``checkpoint`` are :class:`~torchrt.data.DataSpec` and
:class:`~torchrt.checkpoint.CheckpointSpec`, which validate themselves; their
errors are :class:`~torchrt.errors.FieldError` instances carrying key, expectation and
value, re-raised here with the file name (never by parsing a message).

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
from torchrt.contract import DEFAULT_HOST, DEFAULT_PORT, Env
from torchrt.data.errors import DataConfigError
from torchrt.data.spec import DataSpec, parse_data_section
from torchrt.errors import FieldError
from torchrt.rendezvous.options import RendezvousOptions, heartbeat_timeout_check
from torchrt.tokens import resolve_token
from torchrt.validation import (Check, Endpoint, Integer, Number, Text, TextList, TextMap, checks_of, missing_key,
                                show, unknown_key)

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
_RDZV_CHECKS = checks_of(RendezvousOptions)  # ... and so are its checks
_PLAIN = Text(plain=True)  # a string that travels in torchrun's --rdzv-conf k=v,k=v


class ConfigError(FieldError):
    """A config file or override is invalid: ``FILE: KEY: PROBLEM``, e.g.
    ``job.yaml: nodes.max: expected an integer >= nodes.min (2), got 1``."""

    def __init__(self, file: str, key: str, problem: str, *, expected: str | None = None, got: Any = None) -> None:
        self.file = file
        self.context = f"{file}: "
        super().__init__(problem, key=key, expected=expected, got=got)


class Section:
    """The raw mapping of one section, read through :mod:`torchrt.validation` checks; a bad
    value raises ConfigError naming the file and the dotted key."""

    def __init__(self, file: str, name: str, raw: Mapping[str, Any], overridden: Iterable[str] = ()) -> None:
        self.file = file
        self.name = name
        self.raw = raw
        self.overridden = set(overridden)

    @property
    def config_dir(self) -> Path:
        return Path(self.file).resolve().parent

    def key(self, key: str) -> str:
        """``section.key`` as the message shows it: ``(from --set)`` when an override set it
        (or set a mapping above it, as ``--set data.digits={...}`` does)."""
        dotted = f"{self.name}.{key}"
        if any(dotted == o or dotted.startswith(o + ".") for o in self.overridden):
            return f"{dotted} (from --set)"
        return dotted

    def error(self, key: str, problem: str, *, expected: str | None = None, got: Any = None) -> ConfigError:
        return ConfigError(self.file, self.key(key), problem, expected=expected, got=got)

    def reraise(self, error: FieldError, key: str | None = None) -> ConfigError:
        """``error`` (from a check or a spec) for ``key`` (default: its own) of this section."""
        return self.error(key or error.key or "(section)", error.problem, expected=error.expected, got=error.got)

    def value(self, key: str, check: Check, default: Any = None) -> Any:
        """The checked value of ``key``; missing or null: ``default`` (``_REQUIRED``: an error),
        checked too, so a default that a bound set by another key rules out is reported."""
        value, shown = self.raw.get(key), None
        if value is None:
            if default is _REQUIRED:
                raise self.reraise(missing_key(key))
            if default is None:
                return None
            value, shown = default, f"{show(default)} (the default)"
        try:
            return check(key, value, shown=shown)
        except FieldError as e:
            raise self.reraise(e) from None

    def file_path(self, key: str, value: str) -> Path:
        """An existing file named by ``key``: absolute, else next to the config file, else in the
        current directory; returned absolute."""
        path = Path(value).expanduser()
        candidates = [path] if path.is_absolute() else list(dict.fromkeys([self.config_dir / path, Path.cwd() / path]))
        for candidate in candidates:
            if candidate.is_file():
                return candidate.resolve()
        raise self.error(key, "expected an existing file (looked for " + ", ".join(str(c) for c in candidates) + ")",
                         expected="an existing file", got=value)


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
        name = s.value("name", Text(), _REQUIRED)
        run_id = s.value("run_id", Text(), name)
        try:
            default_run_dir = str(_RDZV.run_dir_for(run_id))  # the handler's default, which checks the run id
        except FieldError as e:
            raise s.reraise(e, "run_id") from None
        return cls(name=name, run_id=run_id, run_dir=s.value("run_dir", _PLAIN, default_run_dir),
                   max_restarts=s.value("max_restarts", Integer(ge=0), 0))


@dataclasses.dataclass(frozen=True)
class NodesSection:
    """``nodes``: how many nodes (elastic between min and max) and workers per node."""

    min: int = 1
    max: int = 1
    nproc_per_node: int = 1
    monitor_interval: float = 0.1

    @classmethod
    def parse(cls, s: Section) -> NodesSection:
        low = s.value("min", Integer(ge=1), cls.min)
        return cls(min=low, max=s.value("max", Integer(ge=low, bound="nodes.min"), low),
                   nproc_per_node=s.value("nproc_per_node", Integer(ge=1), cls.nproc_per_node),
                   monitor_interval=s.value("monitor_interval", Number(gt=0), cls.monitor_interval))


@dataclasses.dataclass(frozen=True)
class RendezvousSection:
    """``rendezvous``: where the coordinator listens and the ``--rdzv-conf`` settings, checked
    with the same checks (and starting from the same defaults) as ``--rdzv-conf`` itself.

    ``token_file`` is stored as an absolute path and must hold a token; the token itself is
    read only when needed (:meth:`resolved_token`), so it never travels on a command line.
    """

    endpoint: str = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
    token: str | None = None
    token_file: str | None = None
    backend: str = _RDZV.pg_backend
    last_call_timeout: float = _RDZV.last_call_timeout
    rejoin_timeout: float = _RDZV.rejoin_timeout
    join_timeout: float = _RDZV.join_timeout
    heartbeat_interval: float = _RDZV.heartbeat_interval
    heartbeat_timeout: float = _RDZV.heartbeat_timeout
    is_host: bool | None = None

    @classmethod
    def parse(cls, s: Section) -> RendezvousSection:
        token, token_file = s.value("token", _PLAIN), s.value("token_file", _PLAIN)
        if token is not None and token_file is not None:
            raise s.error("token_file", "give token or token_file, not both")
        if token_file is not None:
            token_file = str(s.file_path("token_file", token_file))
            try:
                _PLAIN("token_file", token_file)
                resolve_token(None, token_file)
            except FieldError as e:  # a TokenFileError is one too
                raise s.reraise(e, "token_file") from None
        timings = {key: s.value(key, _RDZV_CHECKS[key], getattr(cls, key))
                   for key in ("last_call_timeout", "rejoin_timeout", "join_timeout", "heartbeat_interval")}
        check = heartbeat_timeout_check(timings["heartbeat_interval"], bound=f"{s.name}.heartbeat_interval")
        return cls(endpoint=s.value("endpoint", Endpoint(), cls.endpoint), token=token, token_file=token_file,
                   backend=s.value("backend", _RDZV_CHECKS["pg_backend"], cls.backend), **timings,
                   heartbeat_timeout=s.value("heartbeat_timeout", check, cls.heartbeat_timeout),
                   is_host=s.value("is_host", _RDZV_CHECKS["is_host"]))

    def resolved_token(self) -> str | None:
        """The job's token: ``token``, else ``token_file``'s, else the environment's
        (:func:`torchrt.tokens.resolve_token`)."""
        return resolve_token(self.token, self.token_file)


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
        script, module = s.value("script", Text()), s.value("module", Text())
        if script and module:
            raise ConfigError(s.file, "entrypoint", "expected exactly one of script or module, got both")
        if module is not None and not all(part.isidentifier() for part in module.split(".")):
            raise s.error("module", f"expected a dotted Python module name, got {show(module)}",
                          expected="a dotted Python module name", got=module)
        if module is None:
            if script is None:
                raise s.reraise(missing_key("script", "or give entrypoint.module instead"))
            script = str(s.file_path("script", script))
        return cls(script=script, module=module, args=s.value("args", TextList(), []),
                   env=s.value("env", TextMap(), {}))


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
        except DataConfigError as e:  # data.NAME.KEY, or data.NAME for the whole entry
            raise s.reraise(e, ".".join(k for k in (e.dataset, e.key) if k) or None) from None


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
                raise s.reraise(unknown_key(str(key), accepted))
        if "dir" not in s.raw:
            raise s.reraise(missing_key("dir"))
        try:
            return cls(CheckpointSpec(**{k: v for k, v in s.raw.items() if v is not None}))
        except CheckpointConfigError as e:
            raise s.reraise(e) from None


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
                raise ConfigError(file, section, f"expected a mapping of keys, got {show(raw[section])}")
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
        raise ConfigError(file, "(top level)", f"expected a mapping of sections, got {show(raw)}")
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
            raise ConfigError(file, name, f"expected a mapping of keys, got {show(body)}")
        accepted = [f.name for f in dataclasses.fields(cls)]
        for key in body:
            if key not in accepted and not getattr(cls, "any_keys", False):
                raise Section(file, name, body, overridden).reraise(unknown_key(str(key), accepted))
        parsed[name] = cls.parse(Section(file, name, body, overridden))
    config = JobConfig(**parsed, path=file)
    logger.debug("loaded config %s: %s", file, config)
    return config


CONFIG_ENV = Env.CONFIG
CONFIG_OVERRIDES_ENV = Env.CONFIG_SET


def config_environment(path: str | os.PathLike[str], overrides: Iterable[str]) -> dict[str, str]:
    """What ``torchrt run`` exports so workers can read the same config (e.g. its datasets)."""
    return {CONFIG_ENV: str(Path(path).resolve()), CONFIG_OVERRIDES_ENV: json.dumps(list(overrides))}


def config_from_environment() -> JobConfig | None:
    """The config this process was started with by ``torchrt run``, or None outside of it."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return None
    return load_config(path, json.loads(os.environ.get(CONFIG_OVERRIDES_ENV, "[]")))
