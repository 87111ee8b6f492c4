"""The MB/s figure that checkpoint events report.

Saves, commits and restores report their throughput in MB/s (10^6 bytes a second). The figure is
kept to three significant figures, not to a fixed number of decimals: a small shard written
slowly (a few kB in tens of milliseconds) is 0.0213 MB/s, and rounding that to one decimal would
report a write that moved bytes as 0.0 MB/s, which the monitor and ``/metrics`` would show as no
throughput at all.
"""

from __future__ import annotations

_MIN_SECONDS = 1e-9


def mbytes_per_second(nbytes: int, seconds: float) -> float:
    """``nbytes`` over ``seconds`` in MB/s, to three significant figures (0.0 only for no bytes)."""
    rate = nbytes / max(seconds, _MIN_SECONDS) / 1e6
    return float(f"{rate:.3g}")
