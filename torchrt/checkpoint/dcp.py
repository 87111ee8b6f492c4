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
torchrt flattens with DCP's traversal rules. Every tensor is one chunk
covering the whole tensor, so DCP's planner can also read part of it.
Replicated keys are served from whichever rank wrote them; per-rank keys from
the reading rank's record (``rank=`` overrides; default: the process group
rank, or 0), and are absent when that rank did not exist at save time.
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
from torch.futures import Future
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.storage import StorageReader

from torchrt.checkpoint.commit import committed_steps
from torchrt.checkpoint.errors import CheckpointError
from torchrt.checkpoint.layout import dtype_from_name
from torchrt.checkpoint.manifest import FORMAT, MANIFEST
from torchrt.checkpoint.restore import CheckpointReader
from torchrt.checkpoint.state import TensorRef, iter_leaves

__all__ = ["TorchrtStorageReader"]


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
        owners = m.replicated_index()
        tree0 = reader.tree(0)
        tree = {k: v for k, v in tree0.items() if k in replicated}
        if rank < m.world_size:
            own = reader.tree(rank)
            tree.update({k: v for k, v in own.items() if k not in replicated})
        entries: dict[str, Any] = {}

        def visit(fqn: str, leaf: Any, top: str) -> None:
            if isinstance(leaf, TensorRef):
                src = owners[fqn][0] if top in replicated else rank
                slot = m.ranks[src].slots[fqn]
                shape = torch.Size(slot.shape)
                zeros = torch.Size([0] * len(shape))
                entries[fqn] = TensorStorageMetadata(TensorProperties(dtype=dtype_from_name(slot.dtype)), shape,
                                                     [ChunkStorageMetadata(offsets=zeros, sizes=shape)])
                self._where[MetadataIndex(fqn, zeros)] = (src, fqn)
            else:
                entries[fqn] = BytesStorageMetadata()
                self._objects[fqn] = leaf

        for key, value in tree.items():
            iter_leaves({key: value}, lambda fqn, leaf, key=key: visit(fqn, leaf, key))
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
