"""Shared helpers for tests: free ports, waiting on conditions, reading run directories."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from torchrt.telemetry import NullReporter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Wait for a condition that another process or thread makes true; fail naming it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    """``(status, body)`` of a GET, an HTTP error status included (the monitor's 404s, 401s)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str) -> Any:
    """The JSON body of a GET that must answer 200."""
    status, body = http_get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def events(run_dir: Path, type: str | None = None) -> list[dict]:
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if type is None or event["type"] == type:
            out.append(event)
    return out


class RecordingReporter(NullReporter):
    """A Reporter that keeps what is emitted (what the coordinator would receive)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []

    def emit(self, type: str, **fields) -> None:
        self.events.append({"type": type, **fields})

    def of(self, type: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type]


class ManualClock:
    """A clock tests advance by hand (``clock.now += 2``) instead of sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now



def node_client(endpoint: str, node_id: str = "n0", *, run_id: str = "job", connect_timeout: float = 10,
                **client_kw: Any) -> Any:
    """A connected node of a one-node job, as a rendezvous handler says hello, without torchrun."""
    from torchrt.contract import Role
    from torchrt.coordinator import CoordinatorClient

    client = CoordinatorClient(endpoint, role=Role.NODE, run_id=run_id, hello={
        "node_id": node_id, "job": {"min_nodes": 1, "max_nodes": 1, "last_call_timeout": 0},
        "info": {"hostname": "localhost", "addr": "127.0.0.1", "nproc": 1, "device_kind": "cpu",
                 "device_count": 0}}, **client_kw)
    client.connect(timeout=connect_timeout)
    return client


def form_round(node: Any) -> int:
    """The node of :func:`node_client` joins; returns the number of the round that formed."""
    from torchrt.contract import Op

    return int(node.request(Op.JOIN, master_port=free_port(), timeout=10)["round"])


def snapshot(model: Any, opt: Any) -> dict:
    """Copies of a model's and an optimizer's tensors, to compare bit for bit later."""
    out = {f"m.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for pid, s in opt.state_dict()["state"].items():
        out.update({f"o.{pid}.{k}": v.clone() for k, v in s.items()})
    return out


def assert_same(a: dict, b: dict, what: str = "") -> None:
    """Two snapshots are identical, tensor for tensor."""
    import torch

    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def spawn_ranks(worker: Callable[..., None], world: int, *args: Any, port: int | None = None) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` spawned processes (``port`` for their
    store, a free one by default); a worker's exception fails the caller with its traceback."""
    import torch.multiprocessing as mp

    mp.start_processes(worker, args=(world, port or free_port(), *args), nprocs=world, start_method="spawn",
                       join=True)


def init_gloo(rank: int, world: int, port: int) -> None:
    """What torchrun would set up for a worker, minus the agent: a store on ``port`` and gloo."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=timedelta(seconds=60), use_libuv=True)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))



def live_and_replayed_views() -> tuple[Any, Any, Callable[[dict], None]]:
    """Two job views and ``logged(event)``, which records an event (numbered as the event log
    does) into both: what only ``live.apply`` gets is what a replay of the run never sees."""
    from torchrt.view import JobView

    live, replay = JobView(), JobView()
    seq = [0]

    def logged(event: dict) -> None:
        seq[0] += 1
        for view in (live, replay):
            view.apply({**event, "seq": seq[0]})

    return live, replay, logged
