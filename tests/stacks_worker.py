"""A worker for tests/test_stacks.py that gets stuck on purpose: ``python stacks_worker.py CASE``.

It starts like a worker under torchrun with the torchrt backend (``torchrt.init()`` with
``TORCHRT_ENDPOINT`` and the ``RANK``/``MASTER_*`` variables the test sets), so its coordinator
connection and stack-dump handler are the real ones; then it prints ``ready`` from inside the
function it gets stuck in:

* ``loop``: a tight pure-Python loop in ``spin``;
* ``sleep``: ``time.sleep`` in ``nap``;
* ``gloo``: rank 0 of 2 runs one all_reduce that completes, then blocks in ``all_reduce`` (called
  from ``reduce``) because its peer never calls it;
* ``peer``: that peer: rank 1, which joins the process group, completes the first all_reduce and
  then waits for its stdin to close.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist

import torchrt


def ready() -> None:
    print("ready", flush=True)


def spin() -> None:
    ready()
    x = 0
    while True:
        x += 1


def nap() -> None:
    ready()
    time.sleep(600)


def reduce() -> None:
    ready()
    dist.all_reduce(torch.ones(4))


def main(case: str) -> None:
    torchrt.init()
    if case in ("gloo", "peer"):
        dist.all_reduce(torch.ones(4))  # a completed collective, which the dump must not list as pending
    if case == "peer":
        ready()
        sys.stdin.read()
        return
    {"loop": spin, "sleep": nap, "gloo": reduce}[case]()


if __name__ == "__main__":
    main(sys.argv[1])
