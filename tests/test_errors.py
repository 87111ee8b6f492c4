"""One error root: every exception class of torchrt derives from TorchrtError, and names are unique."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from collections import Counter

import pytest
from torch.distributed import DistStoreError
from torch.distributed.elastic.rendezvous.api import RendezvousClosedError, RendezvousError, RendezvousTimeoutError

import torchrt
from torchrt.errors import FieldError, TorchrtError, error_from_reply


def torchrt_exception_classes() -> list[type[BaseException]]:
    """Every public exception class defined in a torchrt module (private ones are control flow)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(torchrt.__path__, "torchrt."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name \
                    and not name.startswith("_"):
                found[f"{info.name}.{name}"] = obj
    return list(found.values())


def test_every_torchrt_error_derives_from_torchrt_error_and_names_are_unique() -> None:
    classes = torchrt_exception_classes()
    assert len(classes) > 20  # the walk found the data, checkpoint, rendezvous and config errors
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, TorchrtError))
    assert outside == []
    twice = sorted(name for name, n in Counter(c.__name__ for c in classes).items() if n > 1)
    assert twice == []


def test_errors_keep_the_bases_their_users_catch() -> None:
    from torchrt.checkpoint.errors import CheckpointConfigError, CheckpointError
    from torchrt.config import ConfigError
    from torchrt.data.errors import DataConfigError, DataNotFoundError
    from torchrt.errors import BarrierError, RendezvousConfigError

    assert issubclass(RendezvousConfigError, RendezvousError) and issubclass(RendezvousConfigError, ValueError)
    assert issubclass(BarrierError, DistStoreError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(CheckpointConfigError, CheckpointError)
    for cls in (ConfigError, RendezvousConfigError, CheckpointConfigError, DataConfigError):
        assert issubclass(cls, FieldError), cls


@pytest.mark.parametrize("code, torch_class", [("closed", RendezvousClosedError), ("timeout", RendezvousTimeoutError),
                                               ("no such code", RendezvousError)])
def test_coordinator_replies_become_torchrt_errors_of_torchs_kind(code: str, torch_class: type) -> None:
    error = error_from_reply(code, "why")
    assert isinstance(error, torch_class) and isinstance(error, TorchrtError) and str(error) == "why"


def test_field_errors_pickle_with_their_fields() -> None:
    from torchrt.config import ConfigError
    from torchrt.data.errors import DataConfigError

    for error in (ConfigError("job.yaml", "nodes.max", "expected an integer >= 1, got 0", expected="an integer >= 1",
                              got=0),
                  DataConfigError("expected an integer >= 1, got 0", dataset="d", key="batch_size",
                                  expected="an integer >= 1", got=0)):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.key, copy.expected, copy.got) == \
            (type(error), str(error), error.key, error.expected, error.got)
