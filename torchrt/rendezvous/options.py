"""``--rdzv-conf`` for the torchrt backend: parsed strictly, defaults documented.

Every key torchrun hands over is checked here. An unknown key is an error that
lists the accepted ones, so a typo such as ``heartbeat_timout=10`` cannot pass
silently as it would with the built-in backends.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch.distributed.elastic.rendezvous import RendezvousParameters

from torchrt.errors import RendezvousConfigError

BACKENDS = ("auto", "gloo", "nccl")


@dataclasses.dataclass(frozen=True)
class RendezvousOptions:
    """What a torchrt handler needs besides torchrun's own parameters."""

    token: str | None = None
    run_dir: str | None = None
    is_host: bool | None = None
    pg_backend: str = "auto"  # not "backend": torchrun passes that name to RendezvousParameters itself
    last_call_timeout: float = 1.0
    rejoin_timeout: float = 30.0
    join_timeout: float = 900.0
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 2.5
    connect_timeout: float = 60.0

    @classmethod
    def from_params(cls, params: RendezvousParameters) -> RendezvousOptions:
        config = dict(params.config)
        if "timeout" in config:  # torchrun's --rdzv-timeout always arrives under this name
            config.setdefault("join_timeout", config.pop("timeout"))
        accepted = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - accepted)
        if unknown:
            raise RendezvousConfigError(
                f"unknown --rdzv-conf key(s) {', '.join(unknown)} for the torchrt backend; "
                f"accepted keys: {', '.join(sorted(accepted | {'timeout'}))}")
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name not in config:
                continue
            kind = str(f.type).replace(" | None", "")
            try:
                if kind == "bool":
                    values[f.name] = _as_bool(config[f.name])
                elif kind == "float":
                    values[f.name] = float(config[f.name])
                else:
                    values[f.name] = str(config[f.name])
            except ValueError:
                raise RendezvousConfigError(
                    f"--rdzv-conf {f.name}={config[f.name]!r} is not a valid {kind}") from None
        options = cls(**values)  # type: ignore[arg-type]
        options._validate()
        return options

    def _validate(self) -> None:
        if self.pg_backend not in BACKENDS:
            raise RendezvousConfigError(
                f"--rdzv-conf pg_backend={self.pg_backend!r}; expected one of {', '.join(BACKENDS)}")
        for name in ("last_call_timeout", "rejoin_timeout"):
            if getattr(self, name) < 0:
                raise RendezvousConfigError(f"--rdzv-conf {name} must be >= 0, got {getattr(self, name)}")
        for name in ("join_timeout", "heartbeat_interval", "heartbeat_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise RendezvousConfigError(f"--rdzv-conf {name} must be > 0, got {getattr(self, name)}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise RendezvousConfigError(
                f"--rdzv-conf heartbeat_timeout ({self.heartbeat_timeout}) must exceed "
                f"heartbeat_interval ({self.heartbeat_interval})")

    def run_dir_for(self, run_id: str) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        return Path(os.environ.get("TORCHRT_RUNS_DIR", "torchrt_runs")) / run_id

    def job(self, min_nodes: int, max_nodes: int) -> dict[str, object]:
        """The job description a node sends with its hello (the first one configures the job)."""
        return {"min_nodes": min_nodes, "max_nodes": max_nodes,
                "last_call_timeout": self.last_call_timeout, "rejoin_timeout": self.rejoin_timeout,
                "join_timeout": self.join_timeout, "backend": self.pg_backend,
                "heartbeat_timeout": self.heartbeat_timeout}


def _as_bool(value: object) -> bool:
    text = str(value).lower()
    if text in ("1", "true", "t", "yes", "y"):
        return True
    if text in ("0", "false", "f", "no", "n"):
        return False
    raise ValueError(value)
