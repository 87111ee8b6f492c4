"""``torchrt status``: a job's membership, rounds and recent events as tables."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from torchrt.contract import Op, Push, Role
from torchrt.coordinator.client import CoordinatorClient


def fetch_status(endpoint: str, token: str | None = None, events: int = 15) -> dict[str, Any]:
    """The coordinator's snapshot and its most recent events."""
    client = CoordinatorClient(endpoint, role=Role.OBSERVER, token=token)
    try:
        client.connect(timeout=5)
        return client.request(Op.STATUS, events=events, timeout=10)
    finally:
        client.close()


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_status(reply: dict[str, Any]) -> str:
    state = reply["state"]
    coord = state["coordinator"]
    membership = state.get("membership") or {}
    out = [f"run {coord.get('run_id')!s} at {coord['endpoint']} (store port {coord['store_port']}, "
           f"run dir {coord['run_dir']})"]
    current = membership.get("round")
    if current:
        out.append(f"round {current['round']}: world size {current['world_size']}, backend "
                   f"{current['backend']}, reason: {current['reason']}")
    else:
        out.append("no round formed yet")
    pending = membership.get("pending")
    if pending:
        out.append(f"next round needed ({pending['reason']}); {pending['waiting']} node(s) waiting")
    if membership.get("closed"):
        out.append("rendezvous closed")
    nodes = membership.get("nodes") or []
    out += ["", format_table(
        ["node", "status", "rank", "round", "host", "addr", "nproc", "devices"],
        [[n["node_id"], n["status"], n["rank"], n["round"], n["info"].get("hostname"), n["info"].get("addr"),
          n["info"].get("nproc"), f"{n['info'].get('device_kind')}x{n['info'].get('device_count')}"]
         for n in nodes])]
    events = reply.get("events") or []
    if events:
        out += ["", format_table(["seq", "time", "event", "details"], [
            [e["seq"], time.strftime("%H:%M:%S", time.localtime(e["ts"])), e["type"], _details(e)]
            for e in events])]
    return "\n".join(out)


def _details(event: dict[str, Any]) -> str:
    fields = {k: v for k, v in event.items() if k not in ("seq", "ts", "type")}
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    return text if len(text) <= 100 else text[:97] + "..."


def format_event(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    return f"{event['seq']:>6}  {stamp}  {event['type']:<18}  {_details(event)}"


def follow_events(endpoint: str, token: str | None, since: int, emit: Callable[[str], None] = print) -> None:
    """Print every event after ``since`` as the coordinator pushes it, until it goes away."""

    def on_push(message: dict[str, Any]) -> None:
        if message.get("push") == Push.EVENT:
            emit(format_event(message["event"]))

    client = CoordinatorClient(endpoint, role=Role.OBSERVER, token=token, on_push=on_push)
    try:
        client.connect(timeout=5)
        for event in client.request(Op.SUBSCRIBE, since=since)["events"]:
            emit(format_event(event))
        client.lost.wait()
    finally:
        client.close()


def print_status(endpoint: str, token: str | None, events: int, as_json: bool, follow: bool = False) -> int:
    reply = fetch_status(endpoint, token, events)
    if as_json:
        print(json.dumps({"state": reply["state"], "events": reply["events"]}, indent=1))
    else:
        print(render_status(reply))
    if follow:
        last = max((e["seq"] for e in reply["events"]), default=0)
        print("-- following events (Ctrl-C to stop) --", flush=True)
        try:
            follow_events(endpoint, token, last, emit=lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            pass
    return 0
