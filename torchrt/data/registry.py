"""The dataset registry: declared datasets by name, and building a rank's pipeline from a declaration.

Design
------
:class:`DatasetRegistry` maps names to :class:`~torchrt.data.spec.DataSpec`
declarations (from code with :meth:`~DatasetRegistry.register`, or from the
config's ``data`` section with :meth:`~DatasetRegistry.load`). A process-wide
``default_registry`` backs the module functions :func:`register_dataset`,
:func:`get_dataset` and :func:`pipeline_for`.

:func:`build_pipeline` is the single place where a declaration becomes a
running pipeline: it opens the source for the kind, builds the
:class:`~torchrt.data.pipeline.ShardedPipeline` for ``(rank, world_size)`` and
emits ``dataset_registered`` through telemetry, which is how the coordinator
learns about the dataset (size, shards, fields, batch size, world size and the
part this rank reads). The registry itself holds no coordinator state: the
coordinator folds the events (:func:`torchrt.data.events.registry_view`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from torchrt.data.errors import DataConfigError
from torchrt.data.pipeline import ShardedPipeline
from torchrt.data.shards import ShardReader
from torchrt.data.sources import DigitsSource, MapSource, Source, SyntheticSource
from torchrt.data.spec import DataSpec, parse_data_section, resolve_object

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetRegistry",
    "build_pipeline",
    "default_registry",
    "get_dataset",
    "open_source",
    "pipeline_for",
    "register_dataset",
]


def open_source(spec: DataSpec) -> Source:
    """The :class:`Source` a declaration names (raises typed errors naming dataset and path)."""
    options = dict(spec.options)
    if spec.kind == "digits":
        return DigitsSource(name=spec.name)
    if spec.kind == "synthetic":
        return SyntheticSource(options.pop("size"), name=spec.name, **options)
    if spec.kind == "shards":
        assert spec.path is not None
        return ShardReader(os.path.expanduser(spec.path), name=spec.name, **options)
    dataset = spec.dataset
    if dataset is None:
        assert spec.path is not None
        target = resolve_object(spec.path, dataset=spec.name, what="path")
        if callable(target) and not hasattr(target, "__getitem__"):
            try:
                dataset = target(**options)
            except TypeError as e:
                raise DataConfigError(f"calling {spec.path} with options {options}: {e}", dataset=spec.name) from e
        elif options:
            raise DataConfigError(f"options given, but {spec.path} is a dataset, not a factory", dataset=spec.name)
        else:
            dataset = target
    return MapSource(dataset, name=spec.name)


def _world() -> tuple[int, int]:
    """This process's (rank, world_size): the process group's, torchrun's environment, or (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover - defensive
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def build_pipeline(spec: DataSpec, rank: int | None = None, world_size: int | None = None, *,
                   clock: Callable[[], float] = time.monotonic, announce: bool = True,
                   **overrides: Any) -> ShardedPipeline:
    """This rank's pipeline for ``spec``; emits ``dataset_registered`` unless ``announce`` is false.

    ``rank``/``world_size`` default to the process group's (or torchrun's ``RANK``/``WORLD_SIZE``).
    ``overrides`` are passed to :class:`ShardedPipeline` (e.g. ``pin_memory``,
    ``multiprocessing_context``).
    """
    if rank is None or world_size is None:
        detected = _world()
        rank = detected[0] if rank is None else rank
        world_size = detected[1] if world_size is None else world_size
    transform = spec.transform
    if isinstance(transform, str):
        transform = resolve_object(transform, dataset=spec.name, what="transform")
    source = open_source(spec)
    pipe = ShardedPipeline(source, name=spec.name, rank=rank, world_size=world_size, batch_size=spec.batch_size,
                           shuffle=spec.shuffle, seed=spec.seed, tail=spec.tail, workers=spec.workers,
                           worker_mode=spec.worker_mode, prefetch=spec.prefetch, transform=transform,
                           preview_interval=spec.preview_interval, report_interval=spec.report_interval,
                           clock=clock, **overrides)
    if announce:
        pipe.announce()
    logger.info("dataset %r (%s, %d samples) rank %d/%d: %d steps of %d this epoch", spec.name, spec.kind,
                pipe.size, rank, world_size, len(pipe), spec.batch_size)
    return pipe


class DatasetRegistry:
    """Declared datasets by name."""

    def __init__(self) -> None:
        self._specs: dict[str, DataSpec] = {}
        self._lock = threading.Lock()

    def register(self, spec: DataSpec | None = None, /, **fields: Any) -> DataSpec:
        """Declare a dataset (a ``DataSpec`` or its fields); re-declaring the same spec is a no-op."""
        if spec is None:
            spec = DataSpec(**fields)
        elif fields:
            raise TypeError("pass either a DataSpec or its fields, not both")
        with self._lock:
            existing = self._specs.get(spec.name)
            if existing is not None and existing != spec:
                raise DataConfigError("declared twice with different settings", dataset=spec.name)
            self._specs[spec.name] = spec
        return spec

    def load(self, section: Any) -> list[DataSpec]:
        """Declare every dataset of a config ``data`` section (list or mapping of entries)."""
        specs = parse_data_section(section)
        for spec in specs:
            self.register(spec)
        return specs

    def get(self, name: str) -> DataSpec:
        if name not in self._specs:
            self._load_from_job_config()
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise DataConfigError(f"not declared (declared: {known})", dataset=name) from None

    def _load_from_job_config(self) -> None:
        """Declare the datasets of the YAML config ``torchrt run`` started this process with."""
        from torchrt.config import config_from_environment  # the config imports torchrt.data.spec

        config = config_from_environment()
        if config is not None:
            for spec in config.data.datasets:
                if spec.name not in self._specs:
                    self.register(spec)

    def pipeline(self, name: str, rank: int | None = None, world_size: int | None = None,
                 **kwargs: Any) -> ShardedPipeline:
        """``build_pipeline`` for a declared dataset."""
        return build_pipeline(self.get(name), rank, world_size, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[DataSpec]:
        return iter([self._specs[n] for n in self.names()])

    def __len__(self) -> int:
        return len(self._specs)


default_registry = DatasetRegistry()


def register_dataset(spec: DataSpec | None = None, /, **fields: Any) -> DataSpec:
    """Declare a dataset in the process-wide registry."""
    return default_registry.register(spec, **fields)


def get_dataset(name: str) -> DataSpec:
    return default_registry.get(name)


def pipeline_for(name: str, rank: int | None = None, world_size: int | None = None, **kwargs: Any) -> ShardedPipeline:
    """This rank's pipeline for a dataset declared in the process-wide registry."""
    return default_registry.pipeline(name, rank, world_size, **kwargs)
