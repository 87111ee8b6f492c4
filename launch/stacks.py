"""``torchrt stacks``: the Python stacks of one rank or of every rank of a running job, grouped.

The CLI connects as an *operator* (asking for a dump acts on the job's
processes, so an observer may not, and the job's token is needed when the
coordinator has one), sends one ``dump_stacks`` op and prints the answer the
way :func:`torchrt.view.stacks.render` groups it: ranks with identical stacks
once, with the ranks that share them; then where the dump is kept in the run
directory. Exit status 0 when at least one rank's stacks came back, 1 when
none did (every rank asked is gone, not in the job or silent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from torchrt.contract import Op, Role, StackAnswer
from torchrt.coordinator.client import CoordinatorClient
from torchrt.view.stacks import render

__all__ = ["print_stacks", "request_dump"]

CONNECT_TIMEOUT_S = 5.0
REPLY_SLACK_S = 10.0  # beyond the dump's own timeout: writing it, a busy coordinator


def request_dump(endpoint: str, token: str | None, rank: int | None, timeout: float) -> tuple[dict[str, Any], str]:
    """The coordinator's reply to one ``dump_stacks`` (``rank`` None: every rank), and its run
    directory."""
    client = CoordinatorClient(endpoint, role=Role.OPERATOR, token=token)
    try:
        welcome = client.connect(timeout=CONNECT_TIMEOUT_S)
        reply = client.request(Op.DUMP_STACKS, rank=rank, timeout_s=timeout, timeout=timeout + REPLY_SLACK_S)
    finally:
        client.close()
    return reply, str(welcome.get("run_dir") or "")


def print_stacks(endpoint: str, token: str | None, rank: int | None, timeout: float, as_json: bool = False,
                 include_internal: bool = False) -> int:
    reply, run_dir = request_dump(endpoint, token, rank, timeout)
    where = str(Path(run_dir) / reply["path"]) if reply.get("path") else None
    dump = reply.get("dump")
    if dump is not None:
        asked = list(dump["ranks"])
        answered = [r for r, e in dump["ranks"].items() if e.get("answer") == StackAnswer.ANSWERED]
    else:  # too large for one reply: the summary only, the file has the rest
        asked, answered = reply.get("ranks") or [], reply.get("answered") or []
    if as_json:
        print(json.dumps({k: v for k, v in reply.items() if k not in ("id", "ok")} | {"file": where}, indent=1))
    else:
        if dump is not None:
            print(render(dump, include_internal=include_internal))
        else:
            print(f"stack dump {reply.get('request')} ({reply.get('reason')}): {reply.get('summary')}")
        if not asked:
            print("no worker of the current round is connected to the coordinator (a worker answers "
                  "once it called torchrt.init())")
        if where:
            print(f"\nkept in {where}")
        else:
            print("torchrt: stacks: the dump could not be written to the run directory", file=sys.stderr)
    return 0 if answered else 1
