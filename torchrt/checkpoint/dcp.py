"""Reading torchrt checkpoints with ``torch.distributed.checkpoint.load``.

torchrt writes its own format (a flat byte stream per rank, see
:mod:`~torchrt.checkpoint.manifest`), not DCP's, because it stages and writes
raw tensor bytes with no serialisation step. Interoperability goes the other
way: :class:`TorchrtStorageReader` is a DCP ``StorageReader``, so any code
that loads with DCP can load a torchrt checkpoint::

    import torch.distributed.checkpoint as dcp
    from torchrt.checkpoint.dcp import TorchrtStorageReader

    state = {"model": model.state_dict()}
    dcp.load(state, storage_reader=TorchrtStorageReader("/ckpt"))   # newest commit
    dcp.load(state, storage_reader=TorchrtStorageReader("/ckpt/step_0000000200"))

The FQNs are DCP's (``model.fc.weight``, ``optim.state.0.exp_avg``), since
torchrt flattens with DCP's traversal rules. A plain tensor is one chunk
covering the whole tensor; a DTensor (FSDP2, tensor parallel) is listed with
every piece the ranks wrote, at its offsets in the global tensor, so DCP's
planner reads exactly the overlap of each piece with what the loading rank
holds: any other mesh, world size, or a plain full tensor.
Replicated keys are served from whichever rank wrote them; per-rank keys from
the reading rank's record (``rank=`` overrides; default: the process group
rank, or 0). A per-rank key of a rank that did not exist at save time is
absent, unless it holds DTensors: then its other values are taken from rank
0, as DCP treats non-DTensor values as replicated.

:func:`load_through_planner` is how :mod:`~torchrt.checkpoint.restore` loads
keys that hold DTensors (in the checkpoint or in the state to load into).
Non-tensor values are handed to DCP as ``torch.save`` bytes, as DCP's own
format stores them. Every file read is verified against its CRC-32.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.futures import Future
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.storage import StorageReader

from torchrt.checkpoint.commit import committed_steps
from torchrt.checkpoint.errors import CheckpointError, CorruptCheckpointError
from torchrt.checkpoint.layout import Slot, dtype_from_name
from torchrt.checkpoint.manifest import FORMAT, MANIFEST
from torchrt.checkpoint.reader import CheckpointReader
from torchrt.checkpoint.state import ShardRef, TensorRef, iter_leaves, refs

__all__ = ["TorchrtStorageReader", "load_through_planner"]


def _resolve(path: Path) -> Path:
    if (path / MANIFEST).is_file():
        return path
    steps = committed_steps(path)
    if not steps:
        raise CheckpointError(f"{path}: neither a committed torchrt checkpoint nor a directory holding one")
    return steps[-1][1]


class TorchrtStorageReader(StorageReader):
    """A DCP ``StorageReader`` for a torchrt checkpoint (a ``step_<N>`` directory or a checkpoint root)."""

    def __init__(self, path: str | os.PathLike | None = None, *, rank: int | None = None, threads: int = 4) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.rank = rank
        self.threads = threads
        self._reader: CheckpointReader | None = None
        self._where: dict[MetadataIndex, tuple[int, str]] = {}
        self._objects: dict[str, Any] = {}

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id is not None:
            self.path = Path(checkpoint_id)
        self._reader = None
        self._where, self._objects = {}, {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.path is None:
            raise CheckpointError("TorchrtStorageReader needs a path (or dcp.load(checkpoint_id=...))")
        reader = self._reader = CheckpointReader(_resolve(self.path), threads=self.threads)
        m = reader.manifest
        rank = self.rank if self.rank is not None else (
            dist.get_rank() if dist.is_available() and dist.is_initialized() else 0)
        replicated = set(m.replicated_keys)
        owners, pieces = m.replicated_index(), m.chunk_index()
        tree0 = reader.tree(0)
        own = reader.tree(rank) if rank < m.world_size else {}
        entries: dict[str, Any] = {}

        def tensor_entry(fqn: str, dtype: str, size: torch.Size, chunks: list[tuple[int, Slot]]) -> None:
            metas = []
            for src, slot in chunks:
                offsets = torch.Size(slot.chunk.offsets if slot.chunk else [0] * len(size))
                metas.append(ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(slot.shape)))
                self._where[MetadataIndex(fqn, offsets)] = (src, fqn)
            entries[fqn] = TensorStorageMetadata(TensorProperties(dtype=dtype_from_name(dtype)), size, metas)

        def visit(fqn: str, leaf: Any, src: int | None) -> None:
            if isinstance(leaf, ShardRef):
                if fqn not in pieces:
                    raise CorruptCheckpointError(reader.step_dir, f"no rank wrote a piece of DTensor {fqn!r}")
                first = pieces[fqn][0][1]
                assert first.chunk is not None
                tensor_entry(fqn, first.dtype, torch.Size(first.chunk.global_shape), pieces[fqn])
            elif isinstance(leaf, TensorRef):
                writer = owners[fqn][0] if src is None else src
                slot = m.ranks[writer].slots[fqn]
                tensor_entry(fqn, slot.dtype, torch.Size(slot.shape), [(writer, slot)])
            else:
                entries[fqn] = BytesStorageMetadata()
                self._objects[fqn] = leaf

        for key in [*tree0, *(k for k in own if k not in tree0)]:
            if key in replicated:
                tree, src = tree0[key], None
            elif key in own:
                tree, src = own[key], rank
            elif refs(tree0[key], ShardRef):  # DTensor state: its other values are taken as DCP takes
                tree, src = tree0[key], 0       # them, replicated: rank 0's
            else:
                continue  # a per-rank key of a rank that did not exist at save time
            iter_leaves({key: tree}, lambda fqn, leaf, src=src: visit(fqn, leaf, src))
        return Metadata(state_dict_metadata=entries, storage_data=None)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        assert self._reader is not None, "read_metadata() first"
        requests: dict[int, set[str]] = {}
        for item in plan.items:
            if item.type == LoadItemType.TENSOR:
                src, fqn = self._where[item.storage_index]
                requests.setdefault(src, set()).add(fqn)
        tensors = self._reader.read_tensors(requests)
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                buf = io.BytesIO()
                torch.save(self._objects[item.storage_index.fqn], buf)
                buf.seek(0)
                planner.load_bytes(item, buf)
                continue
            tensor = tensors[self._where[item.storage_index]]
            for dim, (offset, length) in enumerate(zip(item.storage_offsets, item.lengths)):
                if length < tensor.size(dim):
                    tensor = tensor.narrow(dim, offset, length)
            target = planner.resolve_tensor(item).detach()
            if target.size() != tensor.size():
                raise CheckpointError(f"{item.storage_index.fqn}: checkpoint slice {tuple(tensor.size())} does "
                                      f"not fit the target {tuple(target.size())}")
            target.copy_(tensor)
            planner.commit_tensor(item, target)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        path = Path(checkpoint_id)
        try:
            step_dir = _resolve(path)
            return f'"format": "{FORMAT}"' in (step_dir / MANIFEST).read_text()[:200]
        except (CheckpointError, OSError):
            return False


def load_through_planner(step_dir: Path, state: dict[str, Any], rank: int) -> None:
    """Load ``state`` (top-level keys to Stateful objects or nested state dicts) from one
    checkpoint with ``torch.distributed.checkpoint.load``: collective over the default process
    group when there is one; DCP reshards DTensor pieces onto the state's own placements."""
    dcp.load(state, storage_reader=TorchrtStorageReader(step_dir, rank=rank))
