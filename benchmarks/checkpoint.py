#!/usr/bin/env python
"""Checkpoint benchmark: torchrt.checkpoint against torch.save, dcp.save and dcp.async_save, in one run.

Usage: ``python benchmarks/checkpoint.py [--quick] [--json PATH] [--trials N] [--writer-threads W]``

The state: 200 float32 tensors holding 1 GiB (``1g``) or 4 GiB (``4g``), 90 % of the
bytes in 8 of them (the rest in 192 small ones). It is saved by 1 process, and by 2
ranks of a gloo process group (``torch.multiprocessing`` spawn, TCPStore on loopback)
that each hold their half (every other tensor, so 4 big and 96 small each). Each
(size, ranks) case runs in fresh processes, so memory is returned between cases.

Methods, each timed from a barrier (the slowest rank counts):

``torch_save``  ``torch.save`` to one file per rank, then ``fsync``. stall = total.
``dcp``         ``torch.distributed.checkpoint.save`` (a collective). stall = total.
``dcp_async``   ``dcp.async_save`` with its defaults (thread executor, default stager):
                stall = until it returns, total = until its future is done.
``torchrt``     ``CheckpointManager(writer_threads=W).save``: stall = until ``save()``
                returns (the caller may run forward/backward; ``optimizer.step()`` waits
                for the staging by itself); ``staged_s`` = until ``wait_staged()`` (the
                latest the caller can be held up, if it mutates state at once); total =
                until the checkpoint is committed (manifest renamed) on every rank.

``mb_s`` = bytes of the whole state / total_s. Each method first runs once untimed
(reported under ``first``: torchrt allocates and pre-touches its staging buffer then,
DCP creates its executor); then ``--trials`` timed rounds (quick 2, full 3), methods
interleaved within a round, each round starting with the next method (so no method always
follows the same one: deleting a predecessor's files loads the disk for a while), medians
reported. Files are deleted between runs.

Raw limits, measured in the same run (1 process, the same bytes):
``disk_mb_s``       W threads each writing 1/W of the state from a pre-touched buffer into
                    its own file, then fsync: through the page cache (``disk_buffered``)
                    and with O_DIRECT (``disk_direct``, which torchrt uses where it can);
                    the limit is the better of the two.
``memcpy_mb_s``     copying the state's tensors into a pre-touched buffer.
The disk limit is also measured in the 2-rank case (``limits_2ranks``: each rank writes its
half with W threads, from a barrier). And it runs as one more "method" of every timed round
(``disk``: O_DIRECT, W threads per rank, the same bytes, right after torchrt), so that it
meets the same moments of a shared disk as the methods: ``goals[...]["throughput_ratio"]``
divides torchrt's MB/s by this interleaved limit of the same case (1 process or 2 ranks);
``throughput_vs_separate_limit`` divides by the 1-process limit measured after the rounds.

Goals (issue 4): torchrt stall <= 0.25x dcp_async's; torchrt throughput >= 0.8x the disk
limit; torchrt total <= 0.6x dcp_async's. ``goals`` in the JSON holds each ratio and
whether it is met, also for ``staged_s`` in place of the stall.

Everything is written under a temporary directory in /tmp, deleted at the end.
``--quick`` runs only the 1 GiB state (``meta.sizes`` says so) in under 4 minutes.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import free_port

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = {"1g": 1 << 30, "4g": 4 << 30}
METHODS = ("torch_save", "dcp", "dcp_async", "torchrt")
ROUND = (*METHODS, "disk")  # each timed round: the methods, then the raw disk limit


def tensor_numels(total_bytes: int) -> list[int]:
    big = int(total_bytes * 0.9 / 8) // 4
    small = int(total_bytes * 0.1 / 192) // 4
    return [big] * 8 + [small] * 192


def make_state(total_bytes: int, rank: int, world: int) -> dict:
    numels = tensor_numels(total_bytes)
    return {"model": {f"t{i:03d}": torch.empty(n).uniform_() for i, n in enumerate(numels) if i % world == rank}}


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state["model"].values())


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_torch_save(state: dict, where: Path, rank: int) -> dict:
    where.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(where / f"rank{rank}.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    total = time.perf_counter() - t0
    return {"stall_s": total, "total_s": total}


def run_dcp(state: dict, where: Path, rank: int) -> dict:
    import torch.distributed.checkpoint as dcp

    t0 = time.perf_counter()
    dcp.save(state, checkpoint_id=str(where))
    total = time.perf_counter() - t0
    return {"stall_s": total, "total_s": total}


def run_dcp_async(state: dict, where: Path, rank: int) -> dict:
    import torch.distributed.checkpoint as dcp

    t0 = time.perf_counter()
    fut = dcp.async_save(state, checkpoint_id=str(where))
    stall = time.perf_counter() - t0
    fut.result()
    return {"stall_s": stall, "total_s": time.perf_counter() - t0}


class TorchrtRunner:
    def __init__(self, root: Path, writer_threads: int) -> None:
        from torchrt.checkpoint import CheckpointManager

        self.manager = CheckpointManager(root, keep=1, writer_threads=writer_threads)
        self.step = 0

    def __call__(self, state: dict, where: Path, rank: int) -> dict:
        self.step += 1
        t0 = time.perf_counter()
        handle = self.manager.save(state, self.step)
        stall = time.perf_counter() - t0
        handle.wait_staged()
        staged = time.perf_counter() - t0
        status = handle.wait()
        assert status.value == "committed", f"torchrt save failed: {handle.error}"
        return {"stall_s": stall, "staged_s": staged, "total_s": handle.total_s, "write_s": handle.write_s}


def aligned_buffer(nbytes: int) -> torch.Tensor:
    """A pre-touched, page-aligned byte buffer (O_DIRECT needs the alignment)."""
    raw = torch.empty(nbytes + 4096, dtype=torch.uint8)
    skip = -raw.data_ptr() % 4096
    buf = raw[skip:skip + nbytes]
    buf.fill_(0)  # pre-touch
    return buf


def write_raw(buf: torch.Tensor, threads: int, direct: bool, where: Path) -> None:
    """``threads`` threads each write 1/threads of ``buf`` to a file of their own in 8 MiB
    blocks (as torchrt's writers do), then fsync: the disk's limit for these bytes."""
    from torchrt.checkpoint.writer import DIRECT_ALIGN

    view, nbytes = memoryview(buf.numpy()), buf.numel()
    chunk = -(-nbytes // threads // DIRECT_ALIGN) * DIRECT_ALIGN

    def write(i: int) -> None:
        lo, hi, use_direct = i * chunk, min(nbytes, (i + 1) * chunk), direct
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
        fd = os.open(where / f"f{i}", flags, 0o644)
        try:
            pos = lo
            while pos < hi:
                end = min(pos + (8 << 20), hi)
                if use_direct and (end - pos) % DIRECT_ALIGN:
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                    use_direct = False
                pos += os.write(fd, view[pos:end])
            os.fsync(fd)
        finally:
            os.close(fd)

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


class DiskRunner:
    """The disk limit as one more method of each round (so that it meets the same moments of a
    shared disk as the methods it bounds): raw O_DIRECT writes of this rank's bytes."""

    def __init__(self, state: dict, threads: int) -> None:
        self.buf = aligned_buffer(state_bytes(state))
        self.threads = threads

    def __call__(self, state: dict, where: Path, rank: int) -> dict:
        where = where / f"rank{rank}"
        where.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_raw(self.buf, self.threads, True, where)
        total = time.perf_counter() - t0
        return {"stall_s": total, "total_s": total}


def measure_limits(state: dict, base: Path, threads: int, rank: int = 0, world: int = 1) -> dict:
    """Raw disk write (buffered and O_DIRECT) and memcpy into pre-touched memory, same bytes.

    With several ranks each writes its own part with ``threads`` threads from a common
    barrier, and the rate is all ranks' bytes over the slowest rank's time.
    """
    tensors = list(state["model"].values())
    nbytes = state_bytes(state)
    all_bytes = sum(_gather(nbytes, world))
    buf = aligned_buffer(nbytes)
    out: dict = {}
    copies = []
    for _ in range(3 if world == 1 else 0):
        t0 = time.perf_counter()
        off = 0
        for t in tensors:
            n = t.numel() * t.element_size()
            buf[off:off + n].view(t.dtype).copy_(t)
            off += n
        copies.append(time.perf_counter() - t0)
    if copies:
        out["memcpy_mb_s"] = nbytes / min(copies) / 1e6
    for direct, key in ((False, "disk_buffered_mb_s"), (True, "disk_direct_mb_s")):
        rates = []
        for trial in range(2):
            where = base / f"limit-{key}-{trial}-{rank}"
            where.mkdir(parents=True)
            _barrier(world)
            t0 = time.perf_counter()
            write_raw(buf, threads, direct, where)
            slowest = max(_gather(time.perf_counter() - t0, world))
            rates.append(all_bytes / slowest / 1e6)
            shutil.rmtree(where)
        out[key] = statistics.median(rates)
    out["disk_mb_s"] = max(out["disk_buffered_mb_s"], out["disk_direct_mb_s"])
    out["threads"] = threads
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def case_worker(rank: int, world: int, port: int, size: str, trials: int, threads: int, base: str,
                result_path: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    if world > 1:
        store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=timedelta(seconds=300), use_libuv=True)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=600))
    base_dir = Path(base) / f"{size}-{world}"
    state = make_state(SIZES[size], rank, world)
    my_bytes = state_bytes(state)
    total_bytes = my_bytes * world if world == 1 else sum(
        _gather(my_bytes, world))
    runners = {"torch_save": run_torch_save, "dcp": run_dcp, "dcp_async": run_dcp_async,
               "torchrt": TorchrtRunner(base_dir / "torchrt", threads), "disk": DiskRunner(state, threads)}
    samples: dict[str, list[dict]] = {m: [] for m in ROUND}
    first: dict[str, dict] = {}
    for round_ in range(trials + 1):
        for method in ROUND[round_ % len(ROUND):] + ROUND[:round_ % len(ROUND)]:  # each its turn first
            where = base_dir / f"{method}-{round_}"
            _barrier(world)
            got = runners[method](state, where, rank)
            _barrier(world)
            per_rank = _gather(got, world)
            merged = {k: max(r[k] for r in per_rank if r.get(k) is not None) for k in got if got[k] is not None}
            merged["mb_s"] = total_bytes / merged["total_s"] / 1e6
            (first.__setitem__(method, merged) if round_ == 0 else samples[method].append(merged))
            if rank == 0 and method != "torchrt":
                shutil.rmtree(where, ignore_errors=True)
            _barrier(world)
    runners["torchrt"].manager.close()  # type: ignore[union-attr]
    result: dict = {}
    for method in ROUND:
        keys = samples[method][0].keys()
        result[method] = {k: round(statistics.median(s[k] for s in samples[method]), 4) for k in keys}
        result[method]["trials"] = [{k: round(v, 4) for k, v in s.items()} for s in samples[method]]
        result[method]["first"] = {k: round(v, 4) for k, v in first[method].items()}
    result["bytes"] = total_bytes
    del runners
    result["limits"] = measure_limits(state, base_dir, threads, rank, world)
    if rank == 0:
        Path(result_path).write_text(json.dumps(result))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def run_case(size: str, world: int, trials: int, threads: int, base: Path) -> dict:
    result_path = base / f"result-{size}-{world}.json"
    t0 = time.perf_counter()
    mp.start_processes(case_worker, args=(world, free_port(), size, trials, threads, str(base), str(result_path)),
                       nprocs=world, start_method="spawn", join=True)
    out = json.loads(result_path.read_text())
    out["case_s"] = round(time.perf_counter() - t0, 1)
    shutil.rmtree(base / f"{size}-{world}", ignore_errors=True)
    return out


def goals(case: dict, limits: dict) -> dict:
    """Ratios to the peers; throughput against the disk limit measured in the same rounds
    (``throughput_ratio``) and, for reference, against the separately measured 1-process limit."""
    t, a = case["torchrt"], case["dcp_async"]
    out = {
        "stall_ratio": t["stall_s"] / a["stall_s"],
        "staged_ratio": t["staged_s"] / a["stall_s"],
        "throughput_ratio": t["mb_s"] / case["disk"]["mb_s"],
        "throughput_vs_separate_limit": t["mb_s"] / limits["disk_mb_s"],
        "total_ratio": t["total_s"] / a["total_s"],
    }
    out = {k: round(v, 3) for k, v in out.items()}
    out["stall_met"] = out["stall_ratio"] <= 0.25
    out["staged_stall_met"] = out["staged_ratio"] <= 0.25
    out["throughput_met"] = out["throughput_ratio"] >= 0.8
    out["total_met"] = out["total_ratio"] <= 0.6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 GiB only, 2 trials (< 4 min)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--writer-threads", type=int, default=4)
    args = parser.parse_args()
    sizes = ["1g"] if args.quick else ["1g", "4g"]
    trials = args.trials or (2 if args.quick else 3)
    started = time.perf_counter()
    report: dict = {"meta": {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "cuda": torch.cuda.is_available()},
        "torch": torch.__version__, "quick": args.quick, "sizes": sizes, "trials": trials,
        "writer_threads": args.writer_threads,
        "note": "quick mode measures only the 1 GiB state" if args.quick else "1 GiB and 4 GiB states",
    }}
    base = Path(tempfile.mkdtemp(prefix="torchrt-ckpt-bench-", dir="/tmp"))
    try:
        for size in sizes:
            report[size] = {}
            for world in (1, 2):
                print(f"[{time.perf_counter() - started:6.1f}s] {size}, {world} rank(s) ...", flush=True)
                report[size][str(world)] = run_case(size, world, trials, args.writer_threads, base)
            report[size]["limits"] = report[size]["1"].pop("limits")
            report[size]["limits_2ranks"] = report[size]["2"].pop("limits")
            report[size]["goals"] = {"1": goals(report[size]["1"], report[size]["limits"]),
                                     "2": goals(report[size]["2"], report[size]["limits"])}
            _print(size, report[size])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report["limits"] = report["1g"]["limits"]
    report["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(f"done in {report['meta']['wall_s']} s")


def _print(size: str, r: dict) -> None:
    lim = r["limits"]
    lim2 = r["limits_2ranks"]
    print(f"  limits: disk {lim['disk_mb_s']:.0f} MB/s (buffered {lim['disk_buffered_mb_s']:.0f}, "
          f"direct {lim['disk_direct_mb_s']:.0f}), memcpy {lim['memcpy_mb_s']:.0f} MB/s; "
          f"2 ranks: disk {lim2['disk_mb_s']:.0f} MB/s")
    for world in ("1", "2"):
        for m in ROUND:
            x = r[world][m]
            extra = f" staged {x['staged_s']:.3f}" if "staged_s" in x else ""
            print(f"  {size} x{world} {m:10s} stall {x['stall_s']:.4f}{extra} total {x['total_s']:.3f} "
                  f"{x['mb_s']:.0f} MB/s")
        print(f"  goals x{world}: {r['goals'][world]}")


if __name__ == "__main__":
    main()
