"""torchrt: a PyTorch-native distributed training runtime that plugs into torchrun.

Workers call :func:`init` to join the job's process group (NCCL when every node
has CUDA, Gloo otherwise, as the coordinator decided) and :func:`barrier` for a
low-latency, store-based barrier whose timings reach the coordinator, and
:func:`step` once per training step to report its figures (never blocks).

The worker API is imported lazily so that loading the rendezvous plug-in (which
torchrun does in every agent) pulls in only what the handler needs.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["BarrierError", "WorkerContext", "__version__", "barrier", "current", "init", "log_metric", "step"]


def __getattr__(name: str) -> Any:
    if name in ("WorkerContext", "barrier", "current", "init"):
        from torchrt import distributed

        return getattr(distributed, name)
    if name == "BarrierError":
        from torchrt.errors import BarrierError

        return BarrierError
    if name == "log_metric":
        from torchrt.telemetry import log_metric

        return log_metric
    if name == "step":
        from torchrt.telemetry.steps import step

        globals()["step"] = step  # called every training step: found directly from now on
        return step
    raise AttributeError(f"module 'torchrt' has no attribute {name!r}")
