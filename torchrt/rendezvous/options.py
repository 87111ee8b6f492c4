"""``--rdzv-conf`` for the torchrt backend: parsed strictly, defaults documented.

Every key torchrun hands over is checked with :mod:`torchrt.validation`, the
same checks the YAML config's ``rendezvous`` section uses, and a bad value
raises :class:`~torchrt.errors.RendezvousConfigError` naming the key
(``--rdzv-conf join_timeout: expected a finite number > 0, got inf``). An
unknown key is an error that lists the accepted ones, so a typo such as
``heartbeat_timout=10`` cannot pass silently as it would with the built-in
backends.

The keys torch documents for its dynamic (c10d) rendezvous are accepted too,
so a command line written for ``--rdzv-backend=c10d`` works unchanged:

* ``join_timeout``, ``last_call_timeout``, ``is_host``: the same meaning;
* ``timeout`` (what torchrun always passes; 900 s unless given) is
  ``join_timeout`` unless that is given too;
* ``keep_alive_interval`` is ``heartbeat_interval``; ``keep_alive_max_attempt``
  makes ``heartbeat_timeout`` that many intervals;
* ``read_timeout`` (c10d's store timeout) is ``connect_timeout``;
* ``close_timeout``, ``use_libuv``, ``store_type`` are checked and logged once
  as having no effect: closing is pushed to every node at once, and the
  coordinator always serves a libuv TCP store.

``token_file`` names a file holding the token (:func:`torchrt.tokens.resolve_token`),
so the secret does not show in ``ps``. ``node_stats_interval`` is how often the
handler samples its machine and worker processes for the job view (seconds;
0: never, as for many simulated nodes in one process).

The straggler and stall thresholds of the coordinator's alert rules
(:mod:`torchrt.view.alerts`) are job settings too (:data:`ALERT_KEYS`):
``straggler_ratio`` (a rank is straggling above this times the other ranks'
median step time), ``straggler_reports`` (for that many reports in a row),
``recover_ratio`` (at most ``straggler_ratio``: it recovers at or below it),
``stall_timeout`` (seconds without step progress before a rank is stalled, at
least; a slow loop gets ``stall_factor`` times its typical step time when that
is longer). Unset, the coordinator's defaults apply; set, they travel in the
job description of the node's hello (:meth:`RendezvousOptions.job`), so they
reach the coordinator whoever started it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from torch.distributed.elastic.rendezvous import RendezvousParameters

from torchrt.contract import JOB_DEFAULTS, Env
from torchrt.errors import FieldError, RendezvousConfigError
from torchrt.tokens import resolve_token
from torchrt.validation import Boolean, Check, Choice, Endpoint, Integer, Number, Text, check_fields, checks_of, setting
from torchrt.view.alerts import AlertSettings

logger = logging.getLogger(__name__)

__all__ = ["ALERT_KEYS", "BACKENDS", "RendezvousOptions", "check_alert_ratios", "heartbeat_timeout_check"]

BACKENDS = ("auto", "gloo", "nccl")

# c10d's keys that mean one of ours: c10d name -> torchrt name
_ALIASES = {"timeout": "join_timeout", "keep_alive_interval": "heartbeat_interval",
            "read_timeout": "connect_timeout"}
# c10d's keys that torchrt checks but has no use for: name -> (check, why)
_NO_EFFECT: dict[str, tuple[Check, str]] = {
    "close_timeout": (Number(gt=0), "closing is pushed to every node at once"),
    "use_libuv": (Boolean(), "the coordinator always serves a libuv TCP store"),
    "store_type": (Choice(("tcp", "file")), "the coordinator serves the job's store over TCP"),
}
_KEEP_ALIVE_MAX_ATTEMPT = Integer(ge=2)
# the alert rules' thresholds a user sets: option key -> torchrt.view.alerts.AlertSettings field
ALERT_KEYS = {"straggler_ratio": "straggler_ratio", "straggler_reports": "straggler_reports",
              "recover_ratio": "recover_ratio", "stall_timeout": "stall_floor_s", "stall_factor": "stall_factor"}
_logged_no_effect: set[str] = set()


def heartbeat_timeout_check(interval: float, bound: str = "heartbeat_interval") -> Check:
    """The check of ``heartbeat_timeout`` once ``heartbeat_interval`` is known: it must exceed it."""
    return Number(gt=interval, bound=bound)


def check_alert_ratios(straggler: float | None, recover: float | None, prefix: str = "") -> None:
    """A rank must recover at or below the ratio that makes it a straggler; an unset ratio is the
    coordinator's default. Raises FieldError naming the key (``prefix``: ``rendezvous.`` in YAML)."""
    defaults = AlertSettings()
    if recover is not None:
        Number(le=defaults.straggler_ratio if straggler is None else straggler,
               bound=f"{prefix}straggler_ratio")("recover_ratio", recover)
    elif straggler is not None:
        Number(ge=defaults.recover_ratio, bound=f"{prefix}recover_ratio")("straggler_ratio", straggler)


@dataclasses.dataclass(frozen=True)
class RendezvousOptions:
    """What a torchrt handler needs besides torchrun's own parameters (validated on construction)."""

    token: str | None = setting(None, Text(optional=True))
    token_file: str | None = setting(None, Text(optional=True))
    run_dir: str | None = setting(None, Text(optional=True))
    is_host: bool | None = setting(None, Boolean(optional=True))
    # not "backend": torchrun passes that name to RendezvousParameters itself
    pg_backend: str = setting(JOB_DEFAULTS.backend, Choice(BACKENDS))
    last_call_timeout: float = setting(JOB_DEFAULTS.last_call_timeout, Number(ge=0))
    rejoin_timeout: float = setting(JOB_DEFAULTS.rejoin_timeout, Number(ge=0))
    join_timeout: float = setting(JOB_DEFAULTS.join_timeout, Number(gt=0))
    heartbeat_interval: float = setting(0.5, Number(gt=0))
    heartbeat_timeout: float = setting(JOB_DEFAULTS.heartbeat_timeout, Number(gt=0))
    connect_timeout: float = setting(60.0, Number(gt=0))
    node_stats_interval: float = setting(1.0, Number(ge=0))
    # the alert rules' thresholds (ALERT_KEYS); None: the coordinator's default
    straggler_ratio: float | None = setting(None, Number(gt=1, optional=True))
    straggler_reports: int | None = setting(None, Integer(ge=1, optional=True))
    recover_ratio: float | None = setting(None, Number(ge=1, optional=True))
    stall_timeout: float | None = setting(None, Number(gt=0, optional=True))
    stall_factor: float | None = setting(None, Number(gt=0, optional=True))

    def __post_init__(self) -> None:
        try:
            check_fields(self)
            heartbeat_timeout_check(self.heartbeat_interval)("heartbeat_timeout", self.heartbeat_timeout)
            check_alert_ratios(self.straggler_ratio, self.recover_ratio)
        except FieldError as e:
            raise RendezvousConfigError.like(e) from None

    @classmethod
    def accepted_keys(cls) -> list[str]:
        """Every ``--rdzv-conf`` key the torchrt backend accepts: its own and c10d's."""
        return sorted({*checks_of(cls), *_ALIASES, *_NO_EFFECT, "keep_alive_max_attempt"})

    @classmethod
    def from_params(cls, params: RendezvousParameters) -> RendezvousOptions:
        """The options in torchrun's parameters; raises RendezvousConfigError naming the key."""
        if params.endpoint:
            try:
                Endpoint()("--rdzv-endpoint", params.endpoint)
            except FieldError as e:
                raise RendezvousConfigError(f"--rdzv-endpoint: {e.problem}", expected=e.expected, got=e.got) from None
        config = _native_names(dict(params.config))
        if config.get("token") is not None and config.get("token_file") is not None:
            raise RendezvousConfigError("give token or token_file, not both", key="token_file")
        checks = checks_of(cls)
        unknown = sorted(set(config) - set(checks))
        if unknown:
            raise RendezvousConfigError(
                f"unknown --rdzv-conf key(s) {', '.join(unknown)} for the torchrt backend; "
                f"accepted keys: {', '.join(cls.accepted_keys())}")
        try:
            values = {key: checks[key].coerce(key, value) for key, value in config.items()}
        except FieldError as e:
            raise RendezvousConfigError.like(e) from None
        options = cls(**values)
        if options.token_file is not None:
            options = dataclasses.replace(options, token=resolve_token(None, options.token_file))
        return options

    def run_dir_for(self, run_id: str) -> Path:
        """``run_dir``, else ``$TORCHRT_RUNS_DIR/RUN_ID``: an :class:`InvalidRunIdError` (a
        ``RendezvousConfigError``) for a run id that is not a plain name (``--rdzv-id=../x``)."""
        from torchrt.coordinator.run_dir import check_run_id

        if self.run_dir:
            return Path(self.run_dir)
        return Path(os.environ.get(Env.RUNS_DIR, "torchrt_runs")) / check_run_id(run_id, key="--rdzv-id")

    def job(self, min_nodes: int, max_nodes: int) -> dict[str, object]:
        """The job description a node sends with its hello (the first one configures the job)."""
        return {"min_nodes": min_nodes, "max_nodes": max_nodes,
                "last_call_timeout": self.last_call_timeout, "rejoin_timeout": self.rejoin_timeout,
                "join_timeout": self.join_timeout, "backend": self.pg_backend,
                "heartbeat_timeout": self.heartbeat_timeout,
                "alerts": {field: value for key, field in ALERT_KEYS.items()
                           if (value := getattr(self, key)) is not None}}


def _native_names(config: dict[str, Any]) -> dict[str, Any]:
    """c10d's keys in torchrt's names (see the module docstring); the no-effect ones checked,
    logged once and dropped. Raises RendezvousConfigError for a value that cannot mean anything."""
    out = dict(config)
    for key, (check, why) in _NO_EFFECT.items():
        if key in out:
            value = out.pop(key)
            try:
                check.coerce(key, value)
            except FieldError as e:
                raise RendezvousConfigError.like(e) from None
            if key not in _logged_no_effect:
                _logged_no_effect.add(key)
                logger.warning("--rdzv-conf %s=%s has no effect with the torchrt backend: %s", key, value, why)
    if "timeout" in out:  # torchrun always passes it (900 s unless given): join_timeout, if given, wins
        value = out.pop("timeout")
        out.setdefault("join_timeout", value)
    for theirs, ours in _ALIASES.items():
        if theirs in out:
            if ours in out:
                raise RendezvousConfigError(f"give {ours} or {theirs} (its c10d name), not both", key=theirs)
            out[ours] = out.pop(theirs)
    if "keep_alive_max_attempt" in out:
        if "heartbeat_timeout" in out:
            raise RendezvousConfigError("give heartbeat_timeout or keep_alive_max_attempt, not both",
                                        key="keep_alive_max_attempt")
        try:
            attempts = _KEEP_ALIVE_MAX_ATTEMPT.coerce("keep_alive_max_attempt", out.pop("keep_alive_max_attempt"))
            interval = checks_of(RendezvousOptions)["heartbeat_interval"].coerce(
                "heartbeat_interval", out.get("heartbeat_interval", RendezvousOptions.heartbeat_interval))
        except FieldError as e:
            raise RendezvousConfigError.like(e) from None
        out["heartbeat_timeout"] = attempts * interval
    return out
