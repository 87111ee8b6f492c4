"""torchrt: a PyTorch-native distributed training runtime that plugs into torchrun.

Workers call :func:`init` to join the job's process group (NCCL when every node
has CUDA, Gloo otherwise, as the coordinator decided) and :func:`barrier` for a
low-latency, store-based barrier whose timings reach the coordinator.
"""

from torchrt.distributed import WorkerContext, barrier, current, init

__version__ = "0.1.0"

__all__ = ["WorkerContext", "__version__", "barrier", "current", "init"]
