"""Simulated job for the telemetry ingest benchmark: ``python _ingest_sim.py ENDPOINT NODES RANKS_PER_NODE``.

One asyncio process speaks the coordinator's wire protocol for a whole job:
``NODES`` node connections say hello, join and confirm one round (as the
rendezvous handler does) and heartbeat; then ``NODES x RANKS_PER_NODE`` worker
connections say hello for that round and, every second each, send one
``telemetry`` op with one ``step`` report (every 10th second a
``step_progress``, as torchrt.step's reporter does; first, as torchrt.data does, it
registers the dataset the reports then move along), each node one
``node_stats`` sample of itself and its workers. As a real worker's reporter
(:func:`torchrt.telemetry.coordinator_reporter`), a rank sends its batches
without an id (no reply), every tenth as a request, and, when the run ends,
one last telemetry request, answered once the coordinator took everything
before it; a node asks for a reply to each sample, as the rendezvous handler
does. Reports start at random
offsets within the second so they arrive spread, as real ranks' do. It prints
``ready ROUND`` once every connection said hello and reports flow, then runs
until its stdin closes; at the end it prints one JSON line of counts (reports
sent, error answers of any kind, and the ranks' last requests answered).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

from torchrt.contract import PROTOCOL_VERSION, EventType, Op, Role
from torchrt.telemetry.reporter import CONFIRM_EVERY

RUN_ID = "bench-ingest"


class Conn:
    errors = 0  # answers with ok false, on any connection (one to a message without an id too)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ids = 0
        self.waiting: dict[int, asyncio.Future] = {}
        self.task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        return cls(reader, writer)

    async def _read(self) -> None:
        while line := await self.reader.readline():
            message = json.loads(line)
            if message.get("ok") is False:
                Conn.errors += 1
            future = self.waiting.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)

    def send(self, op: str, **fields: Any) -> None:
        """A message that gets no reply (a heartbeat, a worker's telemetry batch)."""
        self.writer.write((json.dumps({"op": op, **fields}) + "\n").encode())

    def request(self, op: str, **fields: Any) -> asyncio.Future:
        self.ids += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.ids] = future
        self.writer.write((json.dumps({"op": op, "id": self.ids, **fields}) + "\n").encode())
        return future


def hello(role: Role, **fields: Any) -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "role": role, "run_id": RUN_ID, "token": None, **fields}


def step_report(rank: int, step: int, logged: bool) -> dict[str, Any]:
    return {"type": EventType.STEP_PROGRESS if logged else EventType.STEP, "step": step, "steps": 10,
            "window_s": 1.0, "step_ms": 100.0 + rank % 7, "step_max_ms": 120.0, "busy_ms": 90.0,
            "data_wait_ms": 5.0, "barrier_ms": 3.0, "checkpoint_ms": 0.0, "samples": 640, "samples_per_s": 640.0,
            "loss": 1.0 / (1 + step), "scalars": {"lr": 0.1}, "epoch": 0, "position": step * 640,
            "dataset": "train", "data_samples": step * 64, "data_session": f"s{rank}"}


def dataset_registered(rank: int, world_size: int) -> dict[str, Any]:
    """What a rank's pipeline says first (torchrt.data): the step reports then move its dataset along."""
    return {"type": EventType.DATASET_REGISTERED, "dataset": "train", "session": f"s{rank}", "size": 1 << 30,
            "world_size": world_size, "batch_size": 64, "epoch": 0, "position": 0,
            "assignment": {"scheme": "strided", "rank": rank, "world_size": world_size, "batch_size": 64}}


def node_sample(node: int, ranks: range) -> dict[str, Any]:
    return {"type": EventType.NODE_STATS, "cpu_percent": 50.0, "cpus": 64, "mem_percent": 40.0,
            "mem_used": 1 << 36, "mem_total": 1 << 38, "disk_read_bps": 0.0, "disk_write_bps": 1e6,
            "net_recv_bps": 1e8, "net_sent_bps": 1e8, "gpus": [],
            "workers": [{"pid": 10_000 + r, "local_rank": r - ranks.start, "rank": r, "state": "running",
                         "cpu_percent": 99.0, "rss": 1 << 31} for r in ranks]}


async def main(endpoint: str, nodes: int, per_node: int) -> None:
    host, port = endpoint.rsplit(":", 1)
    counts = {"sent": 0, "node_samples": 0, "errors": 0, "last_requests_answered": 0}
    node_conns = [await Conn.open(host, int(port)) for _ in range(nodes)]
    job = {"min_nodes": nodes, "max_nodes": nodes, "last_call_timeout": 0, "heartbeat_timeout": 30}
    await asyncio.gather(*(c.request(Op.HELLO, **hello(Role.NODE, node_id=f"node{i}", job=job, info={
        "hostname": f"host{i}", "addr": "127.0.0.1", "nproc": per_node, "device_kind": "cpu", "device_count": 0}))
        for i, c in enumerate(node_conns)))
    joined = await asyncio.gather(*(c.request(Op.JOIN, master_port=20_000 + i) for i, c in enumerate(node_conns)))
    number = joined[0]["round"]
    await asyncio.gather(*(c.request(Op.READY, round=number) for c in node_conns))
    workers = []
    for i in range(nodes):
        for local in range(per_node):
            rank = i * per_node + local
            conn = await Conn.open(host, int(port))
            workers.append((rank, i, conn))
    await asyncio.gather(*(c.request(Op.HELLO, **hello(Role.WORKER, info={
        "rank": rank, "local_rank": rank % per_node, "world_size": nodes * per_node, "local_world_size": per_node,
        "node_id": f"node{i}", "round": number, "pid": 10_000 + rank, "backend": "gloo"})) for rank, i, c in workers))

    async def rank_loop(rank: int, conn: Conn) -> None:
        conn.send(Op.TELEMETRY, events=[dataset_registered(rank, len(workers))])
        await asyncio.sleep(random.random())
        step = 0
        while True:
            step += 10
            events = [step_report(rank, step, step % 100 == 0)]
            if (step // 10) % CONFIRM_EVERY:
                conn.send(Op.TELEMETRY, events=events)
            else:
                conn.request(Op.TELEMETRY, events=events)
            counts["sent"] += 1
            await asyncio.sleep(1.0)

    async def node_loop(i: int, conn: Conn) -> None:
        await asyncio.sleep(random.random())
        while True:
            conn.send(Op.HEARTBEAT)
            conn.request(Op.TELEMETRY, events=[node_sample(i, range(i * per_node, (i + 1) * per_node))])
            counts["node_samples"] += 1
            await asyncio.sleep(1.0)

    async def last_request(conn: Conn) -> None:
        reply = await asyncio.wait_for(conn.request(Op.TELEMETRY, events=[]), 60)
        counts["last_requests_answered"] += bool(reply.get("ok"))

    tasks = [asyncio.create_task(rank_loop(rank, c)) for rank, _, c in workers]
    tasks += [asyncio.create_task(node_loop(i, c)) for i, c in enumerate(node_conns)]
    print(f"ready {number}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(last_request(c) for _, _, c in workers))
    counts["errors"] = Conn.errors
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
