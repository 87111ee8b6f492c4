"""Worker-side telemetry: the one way the rest of torchrt reports anything.

A :class:`Reporter` never blocks the training loop: ``emit`` appends to a
bounded in-memory queue (dropping, and counting the drops, when it is full) and
a background thread ships batches to a sink every ``flush_interval`` seconds.
The sink is injected (``torchrt.init`` wires it to the coordinator), which
keeps this package a leaf with no dependency on the rest of torchrt.
"""

from torchrt.telemetry.reporter import METRIC, NullReporter, Reporter, get_reporter, log_metric, set_reporter

__all__ = ["METRIC", "NullReporter", "Reporter", "get_reporter", "log_metric", "set_reporter"]
