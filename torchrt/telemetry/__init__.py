"""Worker-side telemetry: the one way the rest of torchrt reports anything.

A :class:`Reporter` never blocks the training loop: ``emit`` appends to a
bounded in-memory queue (dropping, and counting the drops, when it is full) and
a background thread ships batches to a sink every ``flush_interval`` seconds.
The sink is injected (``torchrt.init`` wires it to the coordinator with
:func:`coordinator_reporter`: batches sent without waiting for a reply, the
last one a request), which keeps this package a leaf with no dependency on the
rest of torchrt.

:func:`step` (:mod:`torchrt.telemetry.steps`) is the training loop's one call:
it aggregates the steps of a flush window into one report. On the agent side,
:mod:`torchrt.telemetry.node` samples the node and its worker processes.
"""

from torchrt.telemetry.reporter import (METRIC, NullReporter, Reporter, coordinator_reporter, get_reporter, log_metric,
                                       set_reporter)
from torchrt.telemetry.steps import step

__all__ = ["METRIC", "NullReporter", "Reporter", "coordinator_reporter", "get_reporter", "log_metric", "set_reporter",
           "step"]
