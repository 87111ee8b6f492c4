"""``torchrt status``: the job view as tables: the round, nodes, ranks, processes, alerts, events.

One ``status`` request returns the view's snapshot (:mod:`torchrt.view`) and the
pages of it the tables need (nodes, ranks, the nodes' worker processes, at most
:data:`ROWS` each); ``--follow`` then prints every event as it is recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from torchrt.contract import Op, Push, Role
from torchrt.coordinator.client import CoordinatorClient

ROWS = 100  # rows of each table; the header says how many there are in all
PAGES = (("rendezvous", "nodes"), ("workers", "workers"), ("machines", "machines"))
SHOWN_ALERTS = 5


def fetch_status(endpoint: str, token: str | None = None, events: int = 15) -> dict[str, Any]:
    """The coordinator's snapshot, the pages the tables show, and its most recent events."""
    client = CoordinatorClient(endpoint, role=Role.OBSERVER, token=token)
    try:
        client.connect(timeout=5)
        return client.request(Op.STATUS, events=events, timeout=10,
                              pages=[{"part": part, "kind": kind, "limit": ROWS} for part, kind in PAGES])
    finally:
        client.close()


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_status(reply: dict[str, Any]) -> str:
    state, pages = reply["state"], reply.get("pages") or {}
    coord = state["coordinator"]
    rendezvous = state.get("rendezvous") or {}
    out = [f"run {coord.get('run_id')!s} at {coord['endpoint']} (store port {coord['store_port']}, "
           f"run dir {coord['run_dir']})"]
    current = rendezvous.get("current")
    if current:
        out.append(f"round {current['round']}: world size {current['world_size']}, backend "
                   f"{current['backend']}, reason: {current['reason']}")
    else:
        out.append("no round formed yet")
    pending = rendezvous.get("pending")
    if pending:
        out.append(f"next round needed ({pending['reason']}); {pending['waiting']['count']} node(s) waiting, "
                   f"missing: {', '.join(pending['missing']['first']) or 'none'}")
    if rendezvous.get("closed"):
        out.append("rendezvous closed")
    nodes = _items(pages, "rendezvous/nodes")
    if nodes:
        out += ["", _title("nodes", pages, "rendezvous/nodes"), format_table(
            ["node", "status", "rank", "round", "host", "addr", "nproc", "devices"],
            [[n["node_id"], n["status"], n["rank"], n["round"], n.get("hostname"), n.get("addr"), n.get("nproc"),
              f"{n.get('device_kind')}x{n.get('device_count')}"] for n in nodes])]
    out += _ranks(state.get("workers") or {}, pages)
    out += _processes(pages)
    out += _alerts(state.get("alerts") or {})
    events = reply.get("events") or []
    if events:
        out += ["", format_table(["seq", "time", "event", "details"], [
            [e["seq"], time.strftime("%H:%M:%S", time.localtime(e["ts"])), e["type"], _details(e)]
            for e in events])]
    return "\n".join(out)


def _items(pages: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return (pages.get(key) or {}).get("items") or []


def _title(what: str, pages: dict[str, Any], key: str) -> str:
    page = pages.get(key) or {}
    shown, total = len(page.get("items") or []), page.get("total", 0)
    return f"{what} ({total})" if shown == total else f"{what} (first {shown} of {total})"


def _ranks(workers: dict[str, Any], pages: dict[str, Any]) -> list[str]:
    rows = _items(pages, "workers/workers")
    if not rows:
        return []
    progress = workers.get("progress") or {}
    step, epoch = progress.get("step") or {}, progress.get("epoch") or {}
    summary = [f"{workers.get('by_state', {}).get('running', 0)} running of world size {workers.get('world_size')}"]
    if progress.get("reporting"):
        summary.append(f"step {_span(step)}")
        if epoch.get("max") is not None:
            summary.append(f"epoch {_span(epoch)}")
        if progress.get("samples_per_s") is not None:
            summary.append(f"{progress['samples_per_s']:g} samples/s")
        if (progress.get("step_ms") or {}).get("median") is not None:
            summary.append(f"median step {progress['step_ms']['median']:g} ms")
    table = format_table(
        ["rank", "node", "state", "step", "epoch", "step ms", "samples/s", "loss", "alerts"],
        [[r["rank"], r["node_id"], r["state"] if r["state"] == "running" else f"{r['state']} ({r.get('reason')})",
          r.get("step"), r.get("epoch"), _num(r.get("step_ms")), _num(r.get("samples_per_s")), _num(r.get("loss")),
          ", ".join(_alert(kind, alert) for kind, alert in sorted((r.get("alerts") or {}).items()))]
         for r in rows])
    return ["", f"{_title('ranks', pages, 'workers/workers')}: {', '.join(summary)}", table]


def _processes(pages: dict[str, Any]) -> list[str]:
    machines = _items(pages, "machines/machines")
    rows = [[m["node_id"], w.get("pid"), w.get("local_rank"), w.get("rank"), w.get("state"),
             _num(w.get("cpu_percent")), _mb(w.get("rss")), w.get("exit_code")]
            for m in machines for w in m.get("workers") or ()]
    if not rows:
        return []
    return ["", f"worker processes on {len(machines)} node(s)", format_table(
        ["node", "pid", "local rank", "rank", "state", "cpu %", "rss MB", "exit code"], rows)]


def _alerts(alerts: dict[str, Any]) -> list[str]:
    if not alerts.get("total"):
        return []
    counts = ", ".join(f"{kind} {count}" for kind, count in sorted(alerts["counts"].items()))
    recent = [f"  {time.strftime('%H:%M:%S', time.localtime(a['ts']))}  {a['type']}  {_details(a)}"
              for a in (alerts.get("recent") or [])[-SHOWN_ALERTS:] if isinstance(a.get("ts"), (int, float))]
    return ["", f"alerts ({alerts['total']}): {counts}", *recent]


def _alert(kind: str, alert: dict[str, Any]) -> str:
    return f"{kind} x{alert['ratio']}" if alert.get("ratio") is not None else kind


def _span(value: dict[str, Any]) -> str:
    low, high = value.get("min"), value.get("max")
    return f"{low}" if low == high else f"{low}..{high}"


def _num(value: Any) -> str | None:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mb(value: Any) -> str | None:
    return f"{value / 2**20:.0f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
        print(json.dumps({"state": reply["state"], "pages": reply["pages"], "events": reply["events"]}, indent=1))
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
