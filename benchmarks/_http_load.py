"""HTTP load for the monitor benchmark: ``python _http_load.py URL SECONDS THREADS``.

``THREADS`` threads each GET ``URL`` back to back for ``SECONDS`` over one keep-alive connection
(a new one whenever the server closes it, as Werkzeug does after every response), checking that
every answer is a 200 with a body. Prints one JSON line: requests, errors, seconds, rps, the
latency p50/p99 in ms and whether connections were kept alive. A process of its own, so its
Python does not share a GIL with what it measures.
"""

from __future__ import annotations

import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def main(url: str, seconds: float, threads: int) -> None:
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    reused = [0] * threads
    start = threading.Barrier(threads + 1)
    deadline = 0.0

    def run(i: int) -> None:
        conn: http.client.HTTPConnection | None = None
        start.wait()
        while time.monotonic() < deadline:
            began = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                else:
                    reused[i] += 1
                conn.request("GET", target)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or not body:
                    errors[i] += 1
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn = None
                continue
            latencies[i].append((time.perf_counter() - began) * 1e3)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + seconds
    began = time.monotonic()
    start.wait()
    for worker in workers:
        worker.join()
    took = time.monotonic() - began
    flat = sorted(ms for per in latencies for ms in per)
    print(json.dumps({"requests": len(flat), "errors": sum(errors), "seconds": round(took, 3),
                      "rps": round(len(flat) / took, 1), "keep_alive": sum(reused) > 0,
                      "latency_ms": {"p50": round(statistics.median(flat), 3) if flat else None,
                                     "p99": round(flat[int(len(flat) * 0.99)], 3) if flat else None}}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
