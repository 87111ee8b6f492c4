"""What a checkpoint holds: flattening the user's state and putting it back.

Design
------
The state passed to ``save`` is a mapping of top-level keys to tensors, nested
dicts/lists, plain values, or ``Stateful`` objects (anything with
``state_dict()``/``load_state_dict()``: modules, optimizers, torchrt.data
pipelines, :class:`~torchrt.checkpoint.RNGState`, user objects).

``flatten`` calls ``state_dict()`` on top-level Stateful values and walks the
result with **exactly DCP's traversal rules** (``torch.distributed.checkpoint
._traverse.traverse_state_dict``): mappings are descended with ``str(key)``,
lists are descended (by index) only when they hold tensors or non-terminal
containers, everything else is a leaf. Leaf names are the dotted paths, so
``model.fc.weight`` or ``optim.state.0.exp_avg`` are the same fully qualified
names (FQNs) DCP uses; that is what makes our checkpoints loadable through
``torch.distributed.checkpoint.load`` (see :mod:`torchrt.checkpoint.dcp`).

The result is a *tree*: the same nesting with the original key types (an
optimizer's integer parameter ids stay integers), every tensor leaf replaced
by a :class:`TensorRef` placeholder, every other leaf kept inline.

A DTensor leaf (FSDP2, tensor parallel) becomes a :class:`ShardRef`: the rank
stages only its local piece, with the piece's offsets in the global tensor
(a :class:`~torchrt.checkpoint.layout.Chunk`), as DCP does. Where placements
replicate a piece over a mesh dimension, only the rank at coordinate 0 of
that dimension writes it; a ``Partial`` placement (unreduced values) is
refused. Such keys restore through DCP's planner, which reshards the pieces
onto whatever mesh the restoring job has (see :mod:`~torchrt.checkpoint.dcp`). The tree is
serialised at ``save`` time (a snapshot of the small, mutable values: step
counters, learning rates, RNG states); the tensors go through staging.

Restoring reverses it: :func:`materialize` swaps placeholders for tensors, and
:func:`apply` writes into the caller's state: ``load_state_dict`` for Stateful
values, in-place ``copy_`` for tensors (references held by the caller stay
valid), assignment for plain values.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch.distributed.tensor import DTensor, Partial, Replicate
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from torchrt.checkpoint.errors import StateMismatchError
from torchrt.checkpoint.layout import Chunk

__all__ = ["FlatState", "ShardRef", "Stateful", "TensorRef", "apply", "dumps_tree", "flatten", "holds_dtensor",
           "iter_leaves", "loads_tree", "materialize"]


@runtime_checkable
class Stateful(Protocol):
    """torch's Stateful protocol (``torch.distributed.checkpoint.stateful.Stateful``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Placeholder for a staged tensor inside a saved tree."""

    fqn: str


@dataclasses.dataclass(frozen=True)
class ShardRef:
    """Placeholder for a DTensor inside a saved tree; its pieces are in the ranks' records."""

    fqn: str


def _is_tensor_like(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, TensorRef, ShardRef))


def _is_terminal(value: Any) -> bool:
    """DCP's rule: a list is a leaf unless it holds tensors or non-terminal containers."""
    if isinstance(value, Mapping):
        return False
    if not isinstance(value, list):
        return True
    for entry in value:
        if isinstance(entry, (Mapping, list)) and not _is_terminal(entry):
            return False
        if _is_tensor_like(entry):
            return False
    return True


def iter_leaves(tree: Mapping[str, Any], visit: Callable[[str, Any], None]) -> None:
    """Call ``visit(fqn, leaf)`` for every leaf, in DCP's order and naming."""

    def walk(path: tuple, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(path + (str(k),), v)
        elif _is_terminal(value):
            visit(".".join(map(str, path)), value)
        else:
            for i, v in enumerate(value):
                walk(path + (i,), v)

    for key, value in tree.items():
        walk((str(key),), value)


def _is_plain_tensor(value: Any) -> bool:
    return type(value) in (torch.Tensor, torch.nn.Parameter) and value.layout == torch.strided \
        and not value.is_quantized


@dataclasses.dataclass
class FlatState:
    """A state, flattened: the tree plus the tensors to stage, by FQN."""

    tree: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    replicated: set[str]  # FQNs of tensors under replicated top-level keys
    chunks: dict[str, Chunk]  # FQNs of the DTensor pieces this rank writes -> where they sit


def _local_chunk(fqn: str, value: DTensor) -> Chunk | None:
    """Where this rank's piece of ``value`` sits, or None when another rank writes it."""
    placements = value.placements
    if any(isinstance(p, Partial) for p in placements):
        raise StateMismatchError(f"{fqn}: a DTensor with a Partial placement holds unreduced values; "
                                 "reduce it (redistribute to Shard/Replicate) before saving")
    coordinate = value.device_mesh.get_coordinate()
    if coordinate is None or any(isinstance(p, Replicate) and c != 0 for p, c in zip(placements, coordinate)):
        return None
    shape, offsets = compute_local_shape_and_global_offset(value.shape, value.device_mesh, placements)
    if tuple(shape) != tuple(value.to_local().shape):
        raise StateMismatchError(f"{fqn}: the local piece has shape {tuple(value.to_local().shape)}, its "
                                 f"placements {placements} say {tuple(shape)}")
    return Chunk(tuple(value.shape), tuple(int(o) for o in offsets))


def flatten(state: Mapping[str, Any], replicated_keys: Collection[str] = ()) -> FlatState:
    """Flatten ``state`` (see the module docstring); raises on duplicate FQNs."""
    if not isinstance(state, Mapping):
        raise StateMismatchError(f"the state to save must be a mapping of keys to values, got {type(state).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    replicated: set[str] = set()
    chunks: dict[str, Chunk] = {}
    seen: set[str] = set()

    def build(path: tuple, value: Any, rep: bool) -> Any:
        if isinstance(value, Mapping):
            return {k: build(path + (str(k),), v, rep) for k, v in value.items()}
        if not _is_terminal(value):
            return [build(path + (i,), v, rep) for i, v in enumerate(value)]
        fqn = ".".join(map(str, path))
        if fqn in seen:
            raise StateMismatchError(f"two entries of the state flatten to the same name {fqn!r}")
        seen.add(fqn)
        if isinstance(value, DTensor):
            chunk = _local_chunk(fqn, value)
            if chunk is not None:
                tensors[fqn] = value.to_local().detach()
                chunks[fqn] = chunk
            return ShardRef(fqn)
        if _is_plain_tensor(value):
            tensors[fqn] = value.detach()
            if rep:
                replicated.add(fqn)
            return TensorRef(fqn)
        return value

    tree: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise StateMismatchError(f"top-level state keys must be strings, got {key!r}")
        if isinstance(value, Stateful) and not isinstance(value, torch.Tensor):
            value = value.state_dict()
        tree[key] = build((key,), value, key in replicated_keys)
    return FlatState(tree, tensors, replicated, chunks)


def dumps_tree(tree: Mapping[str, Any]) -> bytes:
    """Serialise a tree (torch.save; the small, non-tensor values are snapshotted here)."""
    buf = io.BytesIO()
    torch.save(dict(tree), buf)
    return buf.getvalue()


def loads_tree(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`dumps_tree`. Like ``torch.load(weights_only=False)``: trusted files only."""
    return torch.load(io.BytesIO(data), weights_only=False)


def materialize(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """A copy of ``value`` with every :class:`TensorRef` replaced by its tensor."""
    if isinstance(value, TensorRef):
        return tensors[value.fqn]
    if isinstance(value, Mapping):
        return {k: materialize(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v, tensors) for v in value]
    return value


def refs(value: Any, kind: type = TensorRef) -> list[str]:
    """FQNs of every placeholder of ``kind`` (:class:`TensorRef` or :class:`ShardRef`) under ``value``."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, kind):
            out.append(v.fqn)
        elif isinstance(v, Mapping):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return out


def holds_dtensor(value: Any) -> bool:
    """Whether a state value (a Stateful's ``state_dict()``, a mapping, a list) holds a DTensor."""
    if isinstance(value, Stateful) and not isinstance(value, torch.Tensor):
        value = value.state_dict()
    if isinstance(value, DTensor):
        return True
    if isinstance(value, Mapping):
        return any(holds_dtensor(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_dtensor(v) for v in value)
    return False


def _copy_into(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise StateMismatchError(f"{name}: checkpoint has shape {tuple(source.shape)}, "
                                 f"the state has {tuple(target.shape)}")
    if target.dtype != source.dtype:
        raise StateMismatchError(f"{name}: checkpoint has dtype {source.dtype}, the state has {target.dtype}")
    with torch.no_grad():
        target.copy_(source)


def _apply_value(container: Any, key: Any, target: Any, loaded: Any, name: str) -> None:
    if isinstance(target, torch.Tensor) and isinstance(loaded, torch.Tensor) and _is_plain_tensor(target):
        _copy_into(target, loaded, name)
    elif isinstance(target, dict) and isinstance(loaded, Mapping):
        for k, v in loaded.items():
            if k in target:
                _apply_value(target, k, target[k], v, f"{name}.{k}")
            else:
                target[k] = v
    elif isinstance(target, list) and isinstance(loaded, list) and len(target) == len(loaded):
        for i, v in enumerate(loaded):
            _apply_value(target, i, target[i], v, f"{name}.{i}")
    else:
        container[key] = loaded


def apply(state: dict[str, Any], loaded: Mapping[str, Any], strict: bool = True,
          leave: Collection[str] = ()) -> list[str]:
    """Write ``loaded`` (materialised trees, by top-level key) into ``state``; returns the keys restored.

    Keys in ``leave`` are deliberately not restored and do not count as missing.
    """
    missing = [k for k in state if k not in loaded and k not in leave]
    if missing and strict:
        raise StateMismatchError(f"the checkpoint has no entry for state key(s) {missing}; "
                                 f"it has {sorted(loaded)} (pass strict=False to leave them as they are)")
    restored = []
    for key, target in state.items():
        if key not in loaded:
            continue
        value = loaded[key]
        if isinstance(target, Stateful) and not isinstance(target, torch.Tensor):
            target.load_state_dict(value)
        else:
            _apply_value(state, key, target, value, key)
        restored.append(key)
    return restored
