"""``torchrt doctor``: fail loudly where torchrun would only warn.

torchrun logs a warning and then calls the backend unknown when a plug-in
fails to load. ``doctor`` loads the entry point the same way torchrun does,
checks that torchrun's registry ends up with a working creator, and
optionally that a coordinator answers at an endpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points

# The entry point's name as registered in setup.cfg. Nothing from torchrt is imported at module
# level: the point of doctor is to report a broken install, not to crash on it.
BACKEND_NAME = "torchrt"


def _check_entry_point() -> str:
    found = [ep for ep in entry_points(group="torchrun.handlers") if ep.name == BACKEND_NAME]
    if not found:
        raise RuntimeError(f"no entry point '{BACKEND_NAME}' in the group torchrun.handlers; "
                           f"is torchrt installed in this Python ({sys.executable})?")
    creator = found[0].load()()
    if not callable(creator):
        raise RuntimeError(f"the entry point {found[0].value} returned {creator!r}, not a handler creator")
    return found[0].value


def _check_torchrun_registry() -> str:
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.registry import handler_registry

    params = RendezvousParameters(BACKEND_NAME, "127.0.0.1:1", "doctor", 1, 1)
    handler = handler_registry.create_handler(params)
    return type(handler).__name__


def _check_endpoint(endpoint: str, token: str | None) -> str:
    from torchrt.coordinator.client import ping

    reply = ping(endpoint, timeout=3, token=token)
    if reply is None:
        raise RuntimeError(f"no torchrt coordinator answers at {endpoint}")
    return f"protocol {reply['version']}, torch {reply['torch']}"


def run_doctor(endpoint: str | None, token: str | None = None) -> int:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("entry point torchrun.handlers:torchrt loads", _check_entry_point),
        ("torchrun's registry creates a torchrt handler", _check_torchrun_registry),
    ]
    if endpoint:
        checks.append((f"coordinator answers at {endpoint}", lambda: _check_endpoint(endpoint, token)))
    failed = 0
    for title, check in checks:
        try:
            detail = check()
            print(f"ok    {title}: {detail}")
        except Exception as e:
            failed += 1
            print(f"FAIL  {title}: {type(e).__name__}: {e}", file=sys.stderr)
    if failed:
        print(f"torchrt doctor: {failed} check(s) failed; `torchrun --rdzv-backend=torchrt` will not work",
              file=sys.stderr)
        return 1
    print("torchrt doctor: all checks passed")
    return 0
