"""Screenshots of the monitor from a real demo run, for the README: ``python docs/take_screenshots.py``.

Starts the demo as ``./demo.sh`` does (``python -m launch.demo``: a coordinator with its monitor,
two nodes of two workers training on digits, the faults of configs/demo.yaml). Once the slow rank
has been flagged (``rank_straggling``, after the killed worker's restart and the stopped node),
it photographs every page in Chromium, takes a stack dump of every rank from the Stacks page,
then stops the demo with SIGINT as a terminal's Ctrl-C would. The pictures go to
``docs/screenshots/demo-<page>.png`` (1280 x 800).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
PAGES = ("overview", "tasks", "datasets", "activity", "rounds", "checkpoints", "logs", "settings")
WAIT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged(run_dir: Path, kind: str) -> bool:
    path = run_dir / "events.jsonl"
    return path.exists() and any(json.loads(line).get("type") == kind
                                 for line in path.read_text().splitlines() if line.endswith("}"))


def wait_for(what: str, condition, timeout: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            sys.exit(f"take_screenshots: timed out waiting for {what}")
        time.sleep(0.5)
    return value


def rendered(page: Page) -> None:
    """Wait until the page drew its first data (the pages' own signal; the CSP forbids wait_for_function)."""
    wait_for("the page to render", lambda: page.evaluate("document.body.dataset.rendered === '1'"), 60)
    page.wait_for_timeout(1500)  # let the charts and the live strip take a second of updates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHOTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="torchrt-shots-")) / "run"
    log = run_dir.parent / "demo.log"
    demo = subprocess.Popen([sys.executable, "-m", "launch.demo", "--port", str(free_port()), "--run-dir",
                             str(run_dir)], cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = wait_for("the monitor's URL", lambda: (m := re.search(r"torchrt monitor at (http://\S+)",
                                                                    log.read_text())) and m.group(1))
        print(f"demo monitor at {url}; waiting for the straggler alert", flush=True)
        wait_for("the slow rank's alert", lambda: logged(run_dir, "rank_straggling"))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for name in PAGES:
                page.goto(f"{url}/" if name == "overview" else f"{url}/{name}")
                rendered(page)
                page.screenshot(path=str(args.out / f"demo-{name}.png"))
                print(f"  {name}", flush=True)
            page.goto(f"{url}/stacks")
            rendered(page)
            page.click("#take-all")
            page.wait_for_selector("details.group", timeout=30_000)
            page.screenshot(path=str(args.out / "demo-stacks.png"))
            browser.close()
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(120)
    print(f"screenshots in {args.out}; the run's record in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
