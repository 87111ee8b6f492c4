#!/usr/bin/env python
"""Monitor benchmark: the web monitor of a 1,000-rank job.

Usage: ``python benchmarks/monitor.py [--quick] [--json PATH] [--only SECTION]``

Set-up (every section): a coordinator in this process; ``_ingest_sim.py`` in another, speaking the
wire protocol for 125 simulated nodes of 8 ranks (1,000 ranks: one round, then a step report per
rank and a node sample per node every second); the monitor as the job runs it, ``torchrt monitor
--endpoint`` in a process of its own (gunicorn, one gthread worker; ``--no-tensorboard``).

snapshot_bytes.1000
    Bytes of ``GET /api/v1/snapshot`` (the initial snapshot a page loads); goal <= 256 KB.
api_rps
    ``_http_load.py`` (a process of its own, one thread, 8 keep-alive connections) GETs ``/api/v1/snapshot`` back
    to back for the window; requests answered 200 per second; goal >= 1,000. Also the monitor
    processes' CPU time per request (``server_cpu_ms_per_request``: what one core would hold),
    their CPU without requests (``server_background_cores``, :data:`IDLE_S` measured first:
    following 1,000 ranks' pushes and refreshing) and the per-request CPU net of that
    (``server_cpu_ms_per_request_net``).
    ``werkzeug``: the same against Werkzeug's threaded server (:class:`monitor.serve.MonitorServer`
    in a process of its own), which the monitor process does not use; recorded for the comparison.
event_to_ws_s.{p50,p95}
    A logged event recorded at the coordinator (``error`` events with a marker, one at a time at
    random 0.15-0.5 s intervals) until a websocket client of the monitor (in this process)
    receives the update that carries it: receive time - the event's ``ts``; goal p95 <= 250 ms.
event_to_dom_s.{p50,p95}
    The same events until Chromium (Playwright, /usr/bin/chromium, headless) shows them in the
    Logs page's live tail: a MutationObserver installed before the page loads stamps each
    ``[data-seq]`` row when it appears; goal p95 <= 500 ms. The page is filtered to errors
    (``/logs?level=error``, what a reader watching for errors opens); every marker should appear
    (``lost`` 0). ``unfiltered``: the same on the tail of everything (``/logs``). There 1,000
    ranks log ~100 ``step_progress`` events a second, and one websocket update can carry a
    marker with more than the 100 rows the page shows after it: such a marker is scrolled off
    in the frame that brings it and counts as ``lost`` there, which is not a latency.
page_load_s.1000.{overview,tasks}
    A fresh browser context loads the page until it has drawn its data (``document.body.dataset
    .rendered``, stamped by a MutationObserver): ``performance.now()`` then, from navigation
    start; median of 3 loads; goal <= 2 s. Console errors are counted.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from _common import Json, log, machine, sectioned_args, write_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
INGEST_SIM = HERE / "_ingest_sim.py"
HTTP_LOAD = HERE / "_http_load.py"
sys.path.insert(0, str(REPO))  # torchrt and monitor, run from a checkout

from torchrt.contract import EventType  # noqa: E402

NODES, PER_NODE = 125, 8
IDLE_S = 2.0  # the monitor process's CPU measured without requests first (api_rps)
MARKER = "bench-marker"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# A page's first full draw and each [data-seq] row, stamped as they happen (Date.now(): the events' clock).
STAMPS = """
window.__seen = {};
new MutationObserver((records) => {
  for (const r of records) {
    if (r.type === "attributes" && document.body && document.body.dataset.rendered === "1"
        && window.__renderedAt === undefined) window.__renderedAt = performance.now();
    for (const node of r.addedNodes || []) {
      if (node.nodeType !== 1) continue;
      for (const row of [node, ...node.querySelectorAll("[data-seq]")]) {
        const seq = row.getAttribute && row.getAttribute("data-seq");
        if (seq && !(seq in window.__seen)) window.__seen[seq] = Date.now();
      }
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-rendered"]});
"""
WERKZEUG = """
import sys
from monitor.app import create_app
from monitor.serve import MonitorServer
from monitor.live_source import LiveSource
server = MonitorServer(create_app(LiveSource(sys.argv[1]))).start()
print(server.url, flush=True)
sys.stdin.read()
"""


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def quantiles(values: list[float], goal_p95: float) -> Json:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return {"p50": {"value": round(statistics.median(values), 4)}, "p95": {"value": round(p95, 4), "goal": goal_p95},
            "max": round(values[-1], 4), "samples": len(values)}


# ------------------------------------------------------------------ the job and its monitor
class Job:
    """The coordinator (here), the 1,000 simulated ranks and the monitor process."""

    def __init__(self, run_dir: Path) -> None:
        from torchrt.coordinator import Coordinator, CoordinatorConfig

        self.coordinator = Coordinator(CoordinatorConfig(run_dir=run_dir, port=0))
        self.coordinator.start()
        self.procs: list[subprocess.Popen[str]] = []
        self.sim = self._spawn([sys.executable, str(INGEST_SIM), self.coordinator.endpoint, str(NODES), str(PER_NODE)],
                               stdin=subprocess.PIPE)
        line = self._line(self.sim)
        if not line.startswith("ready"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.monitor = self._spawn([sys.executable, "-m", "launch.cli", "monitor", "--endpoint",
                                    self.coordinator.endpoint, "--no-tensorboard"])
        self.url = self._line(self.monitor).rsplit(" ", 1)[-1].strip()
        deadline = time.monotonic() + 60
        while json.loads(get(self.url + "/api/v1/snapshot"))["snapshot"]["workers"]["total"] < NODES * PER_NODE:
            if time.monotonic() > deadline:
                raise RuntimeError("the monitor does not show 1,000 workers")
            time.sleep(0.5)

    def _spawn(self, argv: list[str], stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline()

    def markers(self, count: int) -> list[dict[str, Any]]:
        """``count`` marker events, one at a time at random 0.15-0.5 s intervals, each recorded on the
        coordinator's loop (where events are recorded); the events as recorded (seq, ts)."""
        events, sent = self.coordinator.events, []
        for _ in range(count):
            time.sleep(random.uniform(0.15, 0.5))
            sent.append(self.coordinator.read_view(
                lambda _view: events.emit(EventType.ERROR, where=MARKER, error="benchmark")))
        return sent

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.stdin is not None:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.coordinator.stop()


@contextmanager
def job() -> Iterator[Job]:
    with tempfile.TemporaryDirectory() as tmp:
        running = Job(Path(tmp) / "run")
        try:
            yield running
        finally:
            running.close()


# ------------------------------------------------------------------ sections
def snapshot_bytes(running: Job) -> Json:
    return {"value": len(get(running.url + "/api/v1/snapshot")), "goal": 256 * 1024}


def api_rps(running: Job, window_s: float, connections: int = 8) -> Json:
    def load(url: str, server: subprocess.Popen[str]) -> Json:
        procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in procs)

        idle = cpu()
        time.sleep(IDLE_S)  # no requests: what following the job costs the monitor by itself
        background = (cpu() - idle) / IDLE_S
        began, at = cpu(), time.monotonic()
        out = subprocess.run([sys.executable, str(HTTP_LOAD), url + "/api/v1/snapshot", str(window_s), str(connections)],
                             capture_output=True, text=True, check=True, env=ENV)
        answer = json.loads(out.stdout)
        used, took = cpu() - began, time.monotonic() - at
        requests = max(answer["requests"], 1)
        answer["server_cpu_ms_per_request"] = round(used / requests * 1e3, 3)
        answer["server_background_cores"] = round(background, 3)
        answer["server_cpu_ms_per_request_net"] = round(max(used - background * took, 0.0) / requests * 1e3, 3)
        return answer

    gunicorn = load(running.url, running.monitor)
    werkzeug_proc = subprocess.Popen([sys.executable, "-c", WERKZEUG, running.coordinator.endpoint],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        assert werkzeug_proc.stdout is not None
        werkzeug = load(werkzeug_proc.stdout.readline().strip(), werkzeug_proc)
    finally:
        assert werkzeug_proc.stdin is not None
        werkzeug_proc.stdin.close()
        werkzeug_proc.wait(30)
    return {"value": gunicorn["rps"], "goal": 1000, "server": "gunicorn gthread", **gunicorn,
            "werkzeug": werkzeug}


def event_to_ws(running: Job, samples: int) -> Json:
    from simple_websocket import Client

    ws = Client.connect(running.url.replace("http", "ws") + "/api/v1/ws")
    arrived: dict[int, float] = {}
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            text = ws.receive(timeout=0.5)
            if text is None:
                continue
            now = time.time()
            for event in json.loads(text).get("events", ()):
                if event.get("where") == MARKER:
                    arrived.setdefault(event["seq"], now)

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    try:
        time.sleep(1.0)  # hello and the first update
        sent = running.markers(samples)
        time.sleep(1.0)
    finally:
        done.set()
        reader.join()
        ws.close()
    latencies = [arrived[e["seq"]] - e["ts"] for e in sent if e["seq"] in arrived]
    return {**quantiles(latencies, 0.25), "lost": samples - len(latencies)}


def rendered_at(page: Any, timeout_s: float = 30.0) -> float:
    """When ``page`` first drew its data (ms from navigation start, stamped in the page). Polled
    from here: Playwright's wait_for_function evaluates strings, which the pages' CSP forbids."""
    deadline = time.monotonic() + timeout_s
    while (stamp := page.evaluate("window.__renderedAt")) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{page.url} did not render within {timeout_s:g}s")
        time.sleep(0.05)
    return float(stamp)


def dom_latencies(browser: Any, running: Job, path: str, samples: int) -> Json:
    """``samples`` markers, one at a time, until the Logs page at ``path`` shows each (see the
    module docstring); ``lost``: markers that never appeared."""
    context = browser.new_context()
    context.add_init_script(STAMPS)
    page = context.new_page()
    page.goto(running.url + path)
    rendered_at(page)
    time.sleep(1.0)
    sent = running.markers(samples)
    time.sleep(3.0)
    seen = page.evaluate("window.__seen")
    context.close()
    latencies = [seen[str(e["seq"])] / 1000 - e["ts"] for e in sent if str(e["seq"]) in seen]
    return {**quantiles(latencies, 0.5), "lost": samples - len(latencies)}


def browser_sections(running: Job, samples: int) -> Json:
    from playwright.sync_api import sync_playwright

    out: Json = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            errors: list[str] = []
            loads: dict[str, list[float]] = {"overview": [], "tasks": []}
            for name, path in (("overview", "/"), ("tasks", "/tasks")):
                for _ in range(3):
                    context = browser.new_context()
                    context.add_init_script(STAMPS)
                    page = context.new_page()
                    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(running.url + path)
                    loads[name].append(rendered_at(page) / 1000)
                    context.close()
            out["page_load_s"] = {"1000": {name: {"value": round(statistics.median(v), 3), "goal": 2.0,
                                                  "all": [round(x, 3) for x in v]} for name, v in loads.items()},
                                  "console_errors": errors[:5], "console_error_count": len(errors)}
            out["event_to_dom_s"] = {**dom_latencies(browser, running, "/logs?level=error", samples),
                                     "unfiltered": dom_latencies(browser, running, "/logs", samples)}
        finally:
            browser.close()
    return out


SECTIONS = ("snapshot", "api", "ws", "browser")


def main() -> None:
    args, only = sectioned_args(__doc__, SECTIONS, quick="shorter windows, fewer samples (about a minute)")
    samples = 20 if args.quick else 60
    results: Json = {"machine": machine(), "quick": args.quick}
    log(f"starting a coordinator, {NODES} x {PER_NODE} simulated ranks and the monitor")
    with job() as running:
        log(f"monitor at {running.url}")
        if "snapshot" in only:
            results["snapshot_bytes"] = {"1000": snapshot_bytes(running)}
            log(f"snapshot_bytes.1000 = {results['snapshot_bytes']['1000']}")
        if "api" in only:
            results["api_rps"] = api_rps(running, window_s=5.0 if args.quick else 15.0)
            log(f"api_rps = {results['api_rps']}")
        if "ws" in only:
            results["event_to_ws_s"] = event_to_ws(running, samples)
            log(f"event_to_ws_s = {results['event_to_ws_s']}")
        if "browser" in only:
            results.update(browser_sections(running, samples))
            log(f"event_to_dom_s = {results['event_to_dom_s']}")
            log(f"page_load_s = {results['page_load_s']}")
    write_results(args.json, results)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
