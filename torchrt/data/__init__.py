"""``torchrt.data``: sharded, exactly-once, resumable-at-any-world-size data pipelines on torchdata.nodes.

Quick start (in a worker started by ``torchrun --rdzv-backend=torchrt``)::

    import torchrt
    from torchrt.data import DataSpec, build_pipeline

    ctx = torchrt.init()
    pipe = build_pipeline(DataSpec(name="digits", kind="digits", batch_size=64, tail="pad"),
                          ctx.rank, ctx.world_size)
    pipe.load_state_dict(saved["data"])          # optional: saved at any world size
    for epoch in range(pipe.epoch, 10):
        for batch in pipe:                       # {"input", "target", "index", "mask"}
            loss = F.cross_entropy(model(batch["input"]), batch["target"])  # padding targets are -100
            ...
            saved = {"data": pipe.state_dict(), ...}

Modules (one job each): :mod:`~torchrt.data.sampling` (global order, per-rank
share, tail policies), :mod:`~torchrt.data.sources` (batch readers: map-style
datasets, arrays, digits, synthetic), :mod:`~torchrt.data.shards` (on-disk
format), :mod:`~torchrt.data.pipeline` (torchdata.nodes chain and state),
:mod:`~torchrt.data.spec` and :mod:`~torchrt.data.registry` (declarations),
:mod:`~torchrt.data.events` (telemetry and the coordinator-side fold),
:mod:`~torchrt.data.preview` (live sample tap), :mod:`~torchrt.data.errors`.
See ``docs/data.md``.

Names are imported lazily, so ``torchrt.data.events`` (used by the
coordinator) does not pull in torchdata.
"""

from __future__ import annotations

from torchrt._lazy import lazy_exports

_EXPORTS = {
    "DataSpec": "spec", "parse_data_section": "spec", "KINDS": "spec",
    "DatasetRegistry": "registry", "build_pipeline": "registry", "default_registry": "registry",
    "get_dataset": "registry", "open_source": "registry", "pipeline_for": "registry", "register_dataset": "registry",
    "ShardedPipeline": "pipeline", "STATE_FORMAT": "pipeline",
    "EpochPlan": "sampling", "GlobalOrder": "sampling", "TAIL_POLICIES": "sampling",
    "Source": "sources", "ArraySource": "sources", "MapSource": "sources", "DigitsSource": "sources",
    "SyntheticSource": "sources",
    "ShardReader": "shards", "ShardWriter": "shards", "write_shards": "shards",
    "PreviewTap": "preview", "encode_png": "preview", "render_sample": "preview",
    "registry_view": "events",
    "DataError": "errors", "DataConfigError": "errors", "DataNotFoundError": "errors",
    "IndexOutOfRangeError": "errors", "SampleReadError": "errors", "ShapeMismatchError": "errors",
    "ShardCorruptError": "errors", "DataStateMismatchError": "errors",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
