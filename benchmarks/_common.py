"""Helpers shared by the benchmark scripts: the command line, progress lines, free ports, the machine, results.

The scripts are run as ``python benchmarks/NAME.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil
import torch

Json = dict[str, Any]


def sectioned_args(doc: str, sections: tuple[str, ...], quick: str) -> tuple[argparse.Namespace, set[str]]:
    """``--quick`` (``quick`` says what it does), ``--json PATH`` and ``--only SECTION`` (repeatable)
    of a benchmark made of ``sections``; returns the arguments and the sections to run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", choices=sections, action="append", help="run only this section (repeatable)")
    args = parser.parse_args()
    return args, set(args.only or sections)


def log(message: str) -> None:
    """A timestamped progress line, flushed at once (benchmarks run for minutes)."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> Json:
    """What the figures were measured on."""
    return {"host": platform.node(), "cpu_count": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def write_results(path: Path | None, results: Json) -> None:
    """Write the results as indented JSON when ``--json PATH`` was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {path}")
