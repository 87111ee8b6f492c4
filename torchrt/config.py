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
from torchrt.rendezvous.options import ALERT_KEYS, RendezvousOptions, check_alert_ratios, heartbeat_timeout_check
from torchrt.tokens import resolve_token
from torchrt.validation import (Check, Endpoint, Integer, Number, Text, TextList, TextMap, checks_of, missing_key,
                                setting, show, unknown_key)
from torchrt.view.alerts import AlertSettings

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_ENV",
    "CONFIG_OVERRIDES_ENV",
    "CheckpointSection",
    "ConfigError",
    "DataSection",
    "DemoFaults",
    "DemoSection",
    "EntrypointSection",
    "JobConfig",
    "JobSection",
    "KillWorker",
    "NodesSection",
    "RendezvousSection",
    "Section",
    "SlowRank",
    "StopNode",
    "config_from_environment",
    "load_config",
]

_REQUIRED: Any = object()
_RDZV = RendezvousOptions()  # the rendezvous section's defaults are the handler's
_RDZV_CHECKS = checks_of(RendezvousOptions)  # ... and so are its checks
_PLAIN = Text(plain=True)  # a string that travels in torchrun's --rdzv-conf k=v,k=v
_PLAIN_OR_NULL = Text(plain=True, optional=True)


def _alert_default(key: str) -> str:
    """What the coordinator uses for an alert threshold the config leaves unset (docs/config.md)."""
    return f"`{getattr(AlertSettings(), ALERT_KEYS[key]):g}`"


def _check(cls: type, key: str) -> Check:
    """The check declared on field ``key`` of section dataclass ``cls`` (what docs/config.md shows)."""
    return checks_of(cls)[key]


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

    def sub(self, key: str) -> Section | None:
        """The mapping under ``key`` as a section of its own (``demo.faults``); absent or null: None."""
        raw = self.raw.get(key)
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.error(key, f"expected a mapping of keys, got {show(raw)}", expected="a mapping of keys",
                             got=raw)
        return Section(self.file, f"{self.name}.{key}", raw, self.overridden)

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

    name: str = setting(check=Text(), doc="name of the job")
    run_id: str = setting(check=Text(), default_doc="`name`",
                          doc="rendezvous id; every node of one run uses the same; a name (letters, digits, `._-`)")
    run_dir: str = setting(check=_PLAIN, default_doc="`$TORCHRT_RUNS_DIR/<run_id>` (`torchrt_runs/<run_id>`)",
                           doc="the run's record (events, state, coordinator.log)")
    max_restarts: int = setting(0, Integer(ge=0), doc="torchrun `--max-restarts`")

    @classmethod
    def parse(cls, s: Section) -> JobSection:
        name = s.value("name", _check(cls, "name"), _REQUIRED)
        run_id = s.value("run_id", _check(cls, "run_id"), name)
        try:
            default_run_dir = str(_RDZV.run_dir_for(run_id))  # the handler's default, which checks the run id
        except FieldError as e:
            raise s.reraise(e, "run_id") from None
        return cls(name=name, run_id=run_id, run_dir=s.value("run_dir", _check(cls, "run_dir"), default_run_dir),
                   max_restarts=s.value("max_restarts", _check(cls, "max_restarts"), cls.max_restarts))


@dataclasses.dataclass(frozen=True)
class NodesSection:
    """``nodes``: how many nodes (elastic between min and max) and workers per node."""

    min: int = setting(1, Integer(ge=1), doc="fewest nodes to start a round")
    max: int = setting(1, Integer(ge=1), default_doc="`min`", doc="most nodes; at least `min`")
    nproc_per_node: int = setting(1, Integer(ge=1), doc="workers per node")
    monitor_interval: float = setting(0.1, Number(gt=0), doc="seconds between torchrun's worker checks")

    @classmethod
    def parse(cls, s: Section) -> NodesSection:
        low = s.value("min", _check(cls, "min"), cls.min)
        return cls(min=low, max=s.value("max", Integer(ge=low, bound="nodes.min"), low),
                   nproc_per_node=s.value("nproc_per_node", _check(cls, "nproc_per_node"), cls.nproc_per_node),
                   monitor_interval=s.value("monitor_interval", _check(cls, "monitor_interval"),
                                            cls.monitor_interval))


@dataclasses.dataclass(frozen=True)
class RendezvousSection:
    """``rendezvous``: where the coordinator listens and the ``--rdzv-conf`` settings, checked
    with the same checks (and starting from the same defaults) as ``--rdzv-conf`` itself.

    ``token_file`` is stored as an absolute path and must hold a token; the token itself is
    read only when needed (:meth:`resolved_token`), so it never travels on a command line.
    """

    endpoint: str = setting(f"{DEFAULT_HOST}:{DEFAULT_PORT}", Endpoint(),
                            doc=f'the coordinator; IPv6 in brackets, quoted for YAML: `"[::1]:{DEFAULT_PORT}"`')
    token: str | None = setting(None, _PLAIN_OR_NULL, doc="shared secret every node and worker must present")
    token_file: str | None = setting(None, _PLAIN_OR_NULL,
                                     doc="a file holding the token instead (relative: next to the config file, "
                                         "then the current directory); it must exist and hold a token; not with "
                                         "`token`")
    backend: str = setting(_RDZV.pg_backend, _RDZV_CHECKS["pg_backend"],
                           doc="process-group backend; `auto`: NCCL when every node has CUDA, else Gloo")
    last_call_timeout: float = setting(_RDZV.last_call_timeout, _RDZV_CHECKS["last_call_timeout"],
                                       doc="seconds to wait for more nodes once `nodes.min` joined")
    rejoin_timeout: float = setting(_RDZV.rejoin_timeout, _RDZV_CHECKS["rejoin_timeout"],
                                    doc="seconds a lost node may take to come back")
    join_timeout: float = setting(_RDZV.join_timeout, _RDZV_CHECKS["join_timeout"],
                                  doc="seconds a node waits for a round")
    heartbeat_interval: float = setting(_RDZV.heartbeat_interval, _RDZV_CHECKS["heartbeat_interval"],
                                        doc="seconds between heartbeats")
    heartbeat_timeout: float = setting(_RDZV.heartbeat_timeout, _RDZV_CHECKS["heartbeat_timeout"],
                                       doc="seconds of silence (more than `heartbeat_interval`) before a node "
                                           "counts as lost")
    is_host: bool | None = setting(None, _RDZV_CHECKS["is_host"],
                                   doc="may this host start the coordinator? null: yes when `endpoint` names "
                                       "this host")
    straggler_ratio: float | None = setting(None, _RDZV_CHECKS["straggler_ratio"], default_doc=_alert_default("straggler_ratio"),
                                            doc="a rank whose step time is above this times the other ranks' "
                                                "median is straggling (at least `recover_ratio`)")
    straggler_reports: int | None = setting(None, _RDZV_CHECKS["straggler_reports"], default_doc=_alert_default("straggler_reports"),
                                            doc="... in this many of its step reports (about one a second) in a row")
    recover_ratio: float | None = setting(None, _RDZV_CHECKS["recover_ratio"], default_doc=_alert_default("recover_ratio"),
                                          doc="a straggling rank recovers at or below this ratio (at most "
                                              "`straggler_ratio`)")
    stall_timeout: float | None = setting(None, _RDZV_CHECKS["stall_timeout"], default_doc=_alert_default("stall_timeout"),
                                          doc="seconds without step progress before a rank is stalled (its "
                                              "stacks are dumped), at least: a slow loop gets `stall_factor` "
                                              "times its typical step time when that is longer")
    stall_factor: float | None = setting(None, _RDZV_CHECKS["stall_factor"], default_doc=_alert_default("stall_factor"),
                                         doc="a stalled rank has made no step progress for this many times its typical "
                                             "step time, or `stall_timeout` if that is longer")

    @classmethod
    def parse(cls, s: Section) -> RendezvousSection:
        token, token_file = s.value("token", _check(cls, "token")), s.value("token_file", _check(cls, "token_file"))
        if token is not None and token_file is not None:
            raise s.error("token_file", "give token or token_file, not both")
        if token_file is not None:
            token_file = str(s.file_path("token_file", token_file))
            try:
                _PLAIN("token_file", token_file)
                resolve_token(None, token_file)
            except FieldError as e:  # a TokenFileError is one too
                raise s.reraise(e, "token_file") from None
        timings = {key: s.value(key, _check(cls, key), getattr(cls, key))
                   for key in ("last_call_timeout", "rejoin_timeout", "join_timeout", "heartbeat_interval")}
        check = heartbeat_timeout_check(timings["heartbeat_interval"], bound=f"{s.name}.heartbeat_interval")
        alerts = {key: s.value(key, _check(cls, key)) for key in ALERT_KEYS}
        try:
            check_alert_ratios(alerts["straggler_ratio"], alerts["recover_ratio"], prefix=f"{s.name}.")
        except FieldError as e:
            raise s.reraise(e) from None
        return cls(endpoint=s.value("endpoint", _check(cls, "endpoint"), cls.endpoint), token=token,
                   token_file=token_file, backend=s.value("backend", _check(cls, "backend"), cls.backend), **timings,
                   heartbeat_timeout=s.value("heartbeat_timeout", check, cls.heartbeat_timeout),
                   is_host=s.value("is_host", _check(cls, "is_host")), **alerts)

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

    script: str | None = setting(None, Text(optional=True), default_doc="required unless `module`",
                                 doc="the training script; a relative path is looked up next to the config file "
                                     "first, then in the current directory")
    module: str | None = setting(None, Text(optional=True), doc="a module to run instead (`python -m` style)")
    args: list[str] = setting(check=TextList(), default_factory=list, doc="arguments of the script; numbers "
                                                                           "become strings")
    env: dict[str, str] = setting(check=TextMap(), default_factory=dict,
                                  doc="extra environment variables for the workers; numbers become strings")

    @classmethod
    def parse(cls, s: Section) -> EntrypointSection:
        script, module = s.value("script", _check(cls, "script")), s.value("module", _check(cls, "module"))
        if script and module:
            raise ConfigError(s.file, "entrypoint", "expected exactly one of script or module, got both")
        if module is not None and not all(part.isidentifier() for part in module.split(".")):
            raise s.error("module", f"expected a dotted Python module name, got {show(module)}",
                          expected="a dotted Python module name", got=module)
        if module is None:
            if script is None:
                raise s.reraise(missing_key("script", "or give entrypoint.module instead"))
            script = str(s.file_path("script", script))
        return cls(script=script, module=module, args=s.value("args", _check(cls, "args"), []),
                   env=s.value("env", _check(cls, "env"), {}))


# ---------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class DataSection:
    """``data``: datasets by name; each entry is a :class:`torchrt.data.DataSpec` mapping
    (kind, path, options, batch_size, shuffle, seed, tail, workers, worker_mode, ...)."""

    datasets: tuple[DataSpec, ...] = ()
    any_keys: typing.ClassVar[bool] = True  # the keys are dataset names, not fixed fields
    keys_from: typing.ClassVar[type] = DataSpec  # each entry's keys (docs/config.md)

    @classmethod
    def parse(cls, s: Section) -> DataSection:
        try:
            return cls(tuple(parse_data_section(dict(s.raw))))
        except DataConfigError as e:  # data.NAME.KEY, or data.NAME for the whole entry
            raise s.reraise(e, ".".join(k for k in (e.dataset, e.key) if k) or None) from None


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """``checkpoint``: a :class:`torchrt.checkpoint.CheckpointSpec` (dir, every_steps,
    every_seconds, keep, async_save, writer_threads, on_error, when_busy); absent: no checkpoints."""

    spec: CheckpointSpec | None = None
    any_keys: typing.ClassVar[bool] = True  # CheckpointSpec checks its own keys
    keys_from: typing.ClassVar[type] = CheckpointSpec

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
class KillWorker:
    """``demo.faults.kill_worker``: the worker of one rank SIGKILLs itself at a step."""

    rank: int = setting(check=Integer(ge=0), doc="global rank of the worker that dies")
    step: int = setting(check=Integer(ge=1), doc="the step at which it dies")


@dataclasses.dataclass(frozen=True)
class StopNode:
    """``demo.faults.stop_node``: the node running one rank is SIGSTOPped (its agent and its
    workers), then SIGCONTinued."""

    rank: int = setting(check=Integer(ge=0), doc="a global rank of the node to stop")
    step: int = setting(check=Integer(ge=1), doc="the step at which the node stops")
    seconds: float = setting(check=Number(gt=0), doc="how long it stays stopped")


@dataclasses.dataclass(frozen=True)
class SlowRank:
    """``demo.faults.slow_rank``: one rank sleeps longer each step (a straggler)."""

    rank: int = setting(check=Integer(ge=0), doc="global rank of the slow worker")
    delay: float = setting(check=Number(gt=0), doc="extra seconds per step")
    from_step: int = setting(1, Integer(ge=1), doc="first slow step")
    until_step: int | None = setting(None, Integer(ge=1, optional=True), default_doc="the end",
                                     doc="last slow step; at least `from_step`")


@dataclasses.dataclass(frozen=True)
class DemoFaults:
    """``demo.faults``: faults the demo job injects on purpose, each at most once per job (a
    restarted job that passes the step again does not repeat it); absent or null: off."""

    kill_worker: KillWorker | None = setting(None, doc="kill a worker at a step")
    stop_node: StopNode | None = setting(None, doc="SIGSTOP a node for some seconds")
    slow_rank: SlowRank | None = setting(None, doc="a slow rank")

    @classmethod
    def parse(cls, s: Section) -> DemoFaults:
        _refuse_unknown(cls, s)
        return cls(**{f.name: _read(typing.get_args(_hints(cls)[f.name])[0], s.sub(f.name))
                      for f in dataclasses.fields(cls)})

    def ranks(self) -> dict[str, int]:
        """Fault name -> the rank it names, for the faults that are on."""
        return {f.name: getattr(self, f.name).rank for f in dataclasses.fields(self) if getattr(self, f.name)}


@dataclasses.dataclass(frozen=True)
class DemoSection:
    """``demo``: the pace and the faults of the demo job (``examples/train_demo.py``,
    ``configs/demo.yaml``); other scripts ignore it."""

    epochs: int = setting(8, Integer(ge=1), doc="epochs to train")
    step_delay: float = setting(0.0, Number(ge=0), doc="seconds each step sleeps, to make a short job watchable")
    faults: DemoFaults = setting(check=None, default_factory=DemoFaults, doc="what goes wrong, on purpose")

    @classmethod
    def parse(cls, s: Section) -> DemoSection:
        return cls(epochs=s.value("epochs", _check(cls, "epochs"), cls.epochs),
                   step_delay=s.value("step_delay", _check(cls, "step_delay"), cls.step_delay),
                   faults=DemoFaults.parse(s.sub("faults") or Section(s.file, f"{s.name}.faults", {})))

    def check_config(self, config: JobConfig) -> None:
        """A fault's rank must exist in the largest world the config allows."""
        world = config.nodes.max * config.nodes.nproc_per_node
        for name, rank in self.faults.ranks().items():
            if rank >= world:
                raise ConfigError(config.path, f"demo.faults.{name}.rank",
                                  f"expected a rank < nodes.max x nodes.nproc_per_node ({world}), got {rank}",
                                  expected=f"an integer < {world}", got=rank)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _refuse_unknown(cls: type, s: Section) -> None:
    accepted = [f.name for f in dataclasses.fields(cls)]
    for key in s.raw:
        if key not in accepted:
            raise s.reraise(unknown_key(str(key), accepted))


def _read(cls: type, s: Section | None) -> Any:
    """An instance of the dataclass ``cls`` from ``s`` (None: None): every field read with its
    declared check and default; a key that is no field is refused. Cross-key bounds
    (``until_step >= from_step``) are checked here for the fields that declare them in their doc."""
    if s is None:
        return None
    _refuse_unknown(cls, s)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = _REQUIRED if f.default is dataclasses.MISSING else f.default
        check = f.metadata["check"]
        if f.name == "until_step":
            check = Integer(ge=values["from_step"], bound=s.key("from_step").removesuffix(" (from --set)"),
                            optional=True)
        values[f.name] = s.value(f.name, check, default)
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """A whole config file. Each field is a section: add a section by adding a field."""

    job: JobSection
    nodes: NodesSection
    rendezvous: RendezvousSection
    entrypoint: EntrypointSection
    data: DataSection
    checkpoint: CheckpointSection
    demo: DemoSection
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
    """Set ``section.key=value`` overrides into ``raw``; return the dotted keys set. A deeper key
    (``demo.faults.kill_worker.step=40``, ``data.digits.batch_size=8``) sets one key of a nested
    mapping, making the mappings on its way when they are absent."""
    done: set[str] = set()
    for text in overrides:
        dotted, eq, value_text = text.partition("=")
        parts = dotted.strip().split(".")
        if not eq or len(parts) < 2 or not all(parts):
            raise ConfigError(file, f"--set {text}", "expected section.key=value, e.g. nodes.max=2")
        value = _parse_yaml(file, value_text, f"--set {text}")
        mapping = raw
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(mapping.get(part), dict):
                if mapping.get(part) is not None:
                    where = ".".join(parts[:depth + 1])
                    raise ConfigError(file, where, f"expected a mapping of keys, got {show(mapping[part])}")
                mapping[part] = {}
            mapping = mapping[part]
        mapping[parts[-1]] = value
        done.add(".".join(parts))
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
    for section in parsed.values():  # checks that need other sections
        if hasattr(section, "check_config"):
            section.check_config(config)
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
