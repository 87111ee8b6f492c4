"""The job view: what the monitor shows, folded from the run's events, live or replayed.

:class:`JobView` (job.py) composes the parts: folds per concern (run.py,
rendezvous.py, workers.py, machines.py, barriers.py, alerts.py, and the
features' own: ``torchrt.data.events.RegistryFold``,
``torchrt.checkpoint.fold.CheckpointFold``) and sources of metric series
(metrics.py and the folds' ``samples``). The series (series.py) have bounded
memory whatever the run length and bounded cardinality whatever the names
(names.py); store.py keeps them in the run directory. fold.py says what a part
is. Nothing here reads the clock or does I/O except store.py and
:meth:`JobView.replay`. See docs/view.md.

Names are imported lazily: a worker that only needs :mod:`torchrt.view.names`
(its barrier reports) does not load the folds.
"""

from __future__ import annotations

from torchrt._lazy import lazy_exports

_EXPORTS = {"Fold": "fold", "Source": "fold", "ViewQueryError": "fold", "JobView": "job", "PARTS": "job"}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
