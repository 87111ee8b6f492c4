#!/usr/bin/env python
"""Data pipeline benchmark: torchrt.data against DataLoader/StatefulDataLoader, side by side, in one run.

Usage: ``python benchmarks/data.py [--quick] [--json PATH] [--workers N] [--data-dir DIR]``

The data: a synthetic 3×32×32 uint8 image set (labels int64) of 1,000,000 samples
(``--samples``), written once with :class:`torchrt.data.ShardWriter` as 16 memmapped
``.npy`` shards (3.1 GB) and reused from ``--data-dir`` by later runs. Both sides read
the same files: torchrt through :class:`~torchrt.data.ShardReader` (batch reads), the
peers through the usual map-style ``Dataset`` whose ``__getitem__`` returns one sample
from the same memmaps. Everything is measured as rank 0 of 2, batch 256, shuffled, the
same worker count on both sides (``--workers``, default 2; 0 is measured too). torchrt's
workers are threads (its default), the DataLoader's processes (its only option).

throughput (samples/s)
    ``torchrt``: ``ShardedPipeline(reader, rank=0, world_size=2, batch_size=256,
    workers=W, prefetch=2)``; ``dataloader``: ``DataLoader(ds, batch_size=256,
    sampler=DistributedSampler(ds, 2, 0), num_workers=W)``. Also recorded, as a stronger
    peer that is not part of the goal: ``dataloader_getitems``, the same DataLoader over a
    dataset with ``__getitems__`` reading the whole batch by fancy indexing (what
    torchrt's reader does), to show how much of the gap is batch reading. Each timed run serves the
    first B batches of an epoch (quick: 400, full: the whole rank-epoch, 1,954) after
    a warm-up of 20 batches (worker start-up excluded from both); runs alternate
    between the sides and the median of R runs (quick 2, full 3) is reported. The
    shards' sha256 is verified once, before any timing (``verify_s``; the peers verify
    nothing).

resume_s (seconds)
    A state saved after 976 steps (50 %) of rank 0's epoch is loaded into a *fresh* pipeline /
    ``StatefulDataLoader`` (new object, as in a restarted process), then the first
    batch is fetched; the time from ``load_state_dict`` to that batch, median of 5.
    torchrt's includes computing the epoch's permutation (its order is not stored);
    the peer's includes starting its worker processes when W > 0 (it has to). Both
    reuse already-open files; torchrt's shards are already verified. Recorded apart
    (``torchrt_new_process_with_sha256``): a new ``ShardReader`` with the default
    ``verify="lazy"`` + resume + first batch, i.e. hashing every shard once (the peer
    has no integrity check to pay for).

elastic (samples)
    2 ranks consume 50 % of the epoch and save; 4 ranks load the saved state and
    finish the epoch. ``lost``: samples of the epoch never served; ``duplicated``:
    samples served more than once. torchrt: every new rank loads the state of old
    rank 0 (all ranks' states are equal), tail policy ``pad``. StatefulDataLoader +
    DistributedSampler: new rank r loads old rank ``r % 2``'s state (there is no right
    choice: its state is per rank). Served data is really read (workers 0 on both sides).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from _common import log, machine, write_results
from torchrt.data import ShardedPipeline, ShardReader, SyntheticSource, write_shards
from torchrt.data.shards import INDEX_FILE

Json = dict[str, Any]
BATCH = 256
WORLD = 2


# ------------------------------------------------------------------------------------------- the data
def ensure_data(directory: Path, samples: int) -> Path:
    """Write the synthetic set once (reused when an index with the same size exists)."""
    index = directory / INDEX_FILE
    if index.exists() and json.loads(index.read_text()).get("size") == samples:
        log(f"reusing {samples:,} samples at {directory}")
        return directory
    log(f"writing {samples:,} synthetic 3x32x32 samples to {directory} ...")
    started = time.perf_counter()
    source = SyntheticSource(samples, shape=(3, 32, 32), num_classes=1000, seed=0)
    write_shards(directory, source, name="synthetic-bench", shard_size=65536, chunk=32768, overwrite=True)
    log(f"  written in {time.perf_counter() - started:.1f}s")
    return directory


class MemmapDataset(Dataset):
    """The peer's dataset: the same shard files, one sample per ``__getitem__`` (the usual idiom).

    It returns ``(input, target, index)``: the index lets the elastic section see which samples
    were served (torchrt's batches carry ``index`` too, so both sides collate the same fields).
    """

    def __init__(self, directory: Path) -> None:
        index = json.loads((directory / INDEX_FILE).read_text())
        self.starts = np.asarray([s["start"] for s in index["shards"]], dtype=np.int64)
        self.inputs = [np.load(directory / s["files"]["input"]["file"], mmap_mode="r") for s in index["shards"]]
        self.targets = [np.load(directory / s["files"]["target"]["file"], mmap_mode="r") for s in index["shards"]]
        self.size = int(index["size"])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        local = i - int(self.starts[shard])
        return torch.from_numpy(np.array(self.inputs[shard][local])), int(self.targets[shard][local]), i


class BatchedMemmapDataset(MemmapDataset):
    """A stronger peer: the DataLoader fetches a whole batch through ``__getitems__`` (fancy indexing per shard)."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)
        shard_of = np.searchsorted(self.starts, idx[order], side="right") - 1
        x = np.empty((len(idx), *self.inputs[0].shape[1:]), dtype=self.inputs[0].dtype)
        y = np.empty(len(idx), dtype=self.targets[0].dtype)
        for shard in np.unique(shard_of):
            rows = order[shard_of == shard]
            local = idx[rows] - self.starts[shard]
            x[rows] = self.inputs[shard][local]
            y[rows] = self.targets[shard][local]
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(idx)


def as_is(batch: Any) -> Any:
    return batch


def torchrt_pipe(reader: ShardReader, rank: int, world: int, workers: int, tail: str = "drop_tail") -> ShardedPipeline:
    return ShardedPipeline(reader, rank=rank, world_size=world, batch_size=BATCH, workers=workers, prefetch=2,
                           tail=tail, seed=0, preview_interval=None, pin_memory=False)  # type: ignore[arg-type]


def peer_loader(ds: MemmapDataset, rank: int, world: int, workers: int, stateful: bool = False) -> DataLoader:
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    kw: Json = dict(batch_size=BATCH, sampler=sampler, num_workers=workers)
    if isinstance(ds, BatchedMemmapDataset):
        kw["collate_fn"] = as_is
    if workers:
        kw["prefetch_factor"] = 2
    if stateful:
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(ds, **kw)
    return DataLoader(ds, **kw)


def samples_of(batch: Any) -> int:
    if isinstance(batch, dict):
        return int(batch["mask"].sum())
    return len(batch[1])


def indices_of(batch: Any) -> np.ndarray:
    if isinstance(batch, dict):
        return batch["index"][batch["mask"]].numpy()
    return batch[2].numpy()


# --------------------------------------------------------------------------------------- throughput
def timed_run(iterable: Any, warmup: int, batches: int) -> float:
    it = iter(iterable)
    for _ in range(warmup):
        next(it)
    served = 0
    started = time.perf_counter()
    for _ in range(batches):
        try:
            served += samples_of(next(it))
        except StopIteration:
            break
    elapsed = time.perf_counter() - started
    del it
    return served / elapsed


def measure_throughput(reader: ShardReader, ds: MemmapDataset, batched: BatchedMemmapDataset,
                       workers_list: list[int], batches: int, repeats: int) -> Json:
    out: Json = {}
    for workers in workers_list:
        runs: dict[str, list[float]] = {"torchrt": [], "dataloader": [], "dataloader_getitems": []}
        for r in range(repeats):
            pipe = torchrt_pipe(reader, 0, WORLD, workers)
            runs["torchrt"].append(timed_run(pipe, 20, batches))
            pipe.close()
            runs["dataloader"].append(timed_run(peer_loader(ds, 0, WORLD, workers), 20, batches))
            runs["dataloader_getitems"].append(timed_run(peer_loader(batched, 0, WORLD, workers), 20, batches))
            latest = ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items())
            log(f"  workers={workers} run {r + 1}/{repeats}: {latest}")
        med = {k: statistics.median(v) for k, v in runs.items()}
        out[str(workers)] = {**{k: round(v) for k, v in med.items()},
                             "ratio": round(med["torchrt"] / med["dataloader"], 2),
                             "ratio_vs_getitems": round(med["torchrt"] / med["dataloader_getitems"], 2),
                             "runs": {k: [round(x) for x in v] for k, v in runs.items()}}
    return out


# ------------------------------------------------------------------------------------------ elastic
def count(seen: np.ndarray) -> Json:
    return {"lost": int((seen == 0).sum()), "duplicated": int((seen > 1).sum()), "served": int(seen.sum())}


def half_steps(size: int) -> int:
    """Steps of 2 ranks x BATCH that stay within 50 % of the epoch (976 for 1M samples: 49.97 %)."""
    return (size // 2) // (2 * BATCH)


def measure_elastic(reader: ShardReader, ds: MemmapDataset) -> tuple[Json, Json]:
    """2 ranks consume 50 % and save, 4 ranks resume and finish; returns the counts and rank 0's saved states."""
    size = len(reader)
    half = half_steps(size)
    result: Json = {"stop_steps": half, "stop_position": half * 2 * BATCH}
    states: Json = {}
    seen = np.zeros(size, dtype=np.int64)
    started = time.perf_counter()
    first = [torchrt_pipe(reader, r, 2, 0, tail="pad") for r in range(2)]
    for pipe in first:
        it = iter(pipe)
        for _ in range(half):
            np.add.at(seen, indices_of(next(it)), 1)
    saved = [p.state_dict() for p in first]
    for p in first:
        p.close()
    assert all({**s, "world_size": 0} == {**saved[0], "world_size": 0} for s in saved), "ranks disagree"
    states["torchrt"] = saved[0]
    for r in range(4):
        pipe = torchrt_pipe(reader, r, 4, 0, tail="pad")
        pipe.load_state_dict(saved[0])
        for batch in pipe:
            np.add.at(seen, indices_of(batch), 1)
    result["torchrt"] = count(seen)
    log(f"  torchrt: {result['torchrt']} ({time.perf_counter() - started:.1f}s)")

    seen[:] = 0
    started = time.perf_counter()
    sdl_states = []
    one_more = None
    for r in range(2):
        dl = peer_loader(ds, r, 2, 0, stateful=True)
        it = iter(dl)
        for _ in range(half):
            np.add.at(seen, indices_of(next(it)), 1)
        sdl_states.append(dl.state_dict())
        if r == 0:
            next(it)  # one batch further (50.02 %): is that state loadable at 4 ranks?
            one_more = dl.state_dict()
    states["stateful_dataloader"] = sdl_states[0]
    for r in range(4):
        dl = peer_loader(ds, r, 4, 0, stateful=True)
        dl.load_state_dict(sdl_states[r % 2])
        for batch in dl:
            np.add.at(seen, indices_of(batch), 1)
    result["stateful_dataloader"] = count(seen)
    try:
        dl = peer_loader(ds, 0, 4, 0, stateful=True)
        dl.load_state_dict(one_more)
        next(iter(dl))
        result["stateful_dataloader"]["one_batch_later"] = "loaded"
    except Exception as e:  # what the peer does a batch past 50 %
        result["stateful_dataloader"]["one_batch_later"] = f"{type(e).__name__} while loading: {e}"[:200]
    log(f"  stateful_dataloader: {result['stateful_dataloader']} ({time.perf_counter() - started:.1f}s)")
    return result, states


# ------------------------------------------------------------------------------------------- resume
def sdl_state_at_half(ds: MemmapDataset, workers: int) -> Json:
    dl = peer_loader(ds, 0, WORLD, workers, stateful=True)
    it = iter(dl)
    for _ in range(half_steps(len(ds))):
        next(it)
    state = dl.state_dict()
    del it
    return state


def measure_resume(reader: ShardReader, ds: MemmapDataset, workers_list: list[int], torchrt_state: Json,
                   sdl_state_w0: Json, trials: int) -> Json:
    out: Json = {}
    for workers in workers_list:
        sdl_state = sdl_state_w0 if workers == 0 else sdl_state_at_half(ds, workers)
        runs: dict[str, list[float]] = {"torchrt": [], "stateful_dataloader": []}
        for _ in range(trials):
            pipe = torchrt_pipe(reader, 0, WORLD, workers)  # a fresh object, as after a restart
            started = time.perf_counter()
            pipe.load_state_dict(torchrt_state)
            first = next(iter(pipe))
            runs["torchrt"].append(time.perf_counter() - started)
            assert pipe.position == torchrt_state["position"] + WORLD * BATCH and len(first["index"]) == BATCH
            pipe.close()
            dl = peer_loader(ds, 0, WORLD, workers, stateful=True)
            started = time.perf_counter()
            dl.load_state_dict(sdl_state)
            it = iter(dl)
            next(it)
            runs["stateful_dataloader"].append(time.perf_counter() - started)
            del it, dl
        med = {k: statistics.median(v) for k, v in runs.items()}
        out[str(workers)] = {"torchrt": round(med["torchrt"], 4),
                             "stateful_dataloader": round(med["stateful_dataloader"], 4),
                             "ratio": round(med["torchrt"] / med["stateful_dataloader"], 2),
                             "runs": {k: [round(x, 4) for x in v] for k, v in runs.items()}}
        log(f"  workers={workers}: torchrt {med['torchrt'] * 1000:.1f} ms, "
            f"stateful_dataloader {med['stateful_dataloader'] * 1000:.1f} ms")
    # Not the goal's figure, but what a restarted process pays in full: opening the shards with
    # the default verify="lazy" (the first batch touches every shard, so all are hashed) + resuming.
    workers = workers_list[-1]
    started = time.perf_counter()
    pipe = torchrt_pipe(ShardReader(reader.path, name=reader.name, verify="lazy"), 0, WORLD, workers)
    pipe.load_state_dict(torchrt_state)
    next(iter(pipe))
    out["torchrt_new_process_with_sha256"] = {"workers": workers, "seconds": round(time.perf_counter() - started, 3)}
    pipe.close()
    log(f"  torchrt resume incl. opening + sha256 of every shard (verify=lazy): "
        f"{out['torchrt_new_process_with_sha256']['seconds']:.2f}s")
    return out


# --------------------------------------------------------------------------------------------- main
def table(results: Json) -> str:
    w = str(results["config"]["workers"])
    t, r, e = results["throughput"][w], results["resume_s"][w], results["elastic"]
    rows = [
        ("metric", "torchrt", "peer", "torchrt/peer"),
        (f"throughput samples/s (workers={w})", f"{t['torchrt']:,}", f"{t['dataloader']:,} (DataLoader)",
         f"{t['ratio']}x"),
    ]
    for workers, v in results["throughput"].items():
        if workers != w:
            rows.append((f"throughput samples/s (workers={workers})", f"{v['torchrt']:,}", f"{v['dataloader']:,}",
                         f"{v['ratio']}x"))
    for workers, v in results["throughput"].items():
        rows.append((f"  vs DataLoader + __getitems__ (workers={workers})", f"{v['torchrt']:,}",
                     f"{v['dataloader_getitems']:,}", f"{v['ratio_vs_getitems']}x"))
    rows.append((f"resume_s (workers={w})", f"{r['torchrt']:.4f}", f"{r['stateful_dataloader']:.4f} (SDL)",
                 f"{r['ratio']}x"))
    for workers, v in results["resume_s"].items():
        if workers != w and workers.isdigit():
            rows.append((f"resume_s (workers={workers})", f"{v['torchrt']:.4f}", f"{v['stateful_dataloader']:.4f}",
                         f"{v['ratio']}x"))
    cold = results["resume_s"].get("torchrt_new_process_with_sha256")
    if cold:
        rows.append((f"  resume_s incl. open + sha256 (workers={cold['workers']})", f"{cold['seconds']:.2f}", "", ""))
    rows.append(("elastic 2->4 lost", f"{e['torchrt']['lost']:,}", f"{e['stateful_dataloader']['lost']:,} (SDL)", ""))
    rows.append(("elastic 2->4 duplicated", f"{e['torchrt']['duplicated']:,}",
                 f"{e['stateful_dataloader']['duplicated']:,} (SDL)", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    goals = [f"  {k}: {'met' if v else 'MISSED'}" for k, v in results["goals"].items()]
    return "\n".join(lines + ["", "goals:"] + goals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats (< 3 min)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workers", type=int, default=2, help="worker count of both sides (default 2)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="dataset size (>= 1M for the record)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "torchrt-bench-data",
                        help="where the synthetic shards are written once and reused")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*set_vital.*")
    started = time.monotonic()
    workers_list = sorted({0, args.workers})
    batches = 400 if args.quick else -(-args.samples // WORLD // BATCH) - 20
    repeats = 2 if args.quick else 3
    directory = ensure_data(args.data_dir / f"synthetic-{args.samples}", args.samples)
    t0 = time.perf_counter()
    reader = ShardReader(directory, name="synthetic-bench", verify="eager")
    verify_s = time.perf_counter() - t0
    log(f"opened and verified {reader.num_shards} shards (sha256) in {verify_s:.1f}s")
    ds = MemmapDataset(directory)
    results: Json = {"config": {"samples": len(reader), "shape": [3, 32, 32], "dtype": "uint8", "batch_size": BATCH,
                                "rank": 0, "world_size": WORLD, "workers": args.workers,
                                "torchrt_worker_mode": "threads", "timed_batches": batches, "repeats": repeats,
                                "quick": args.quick, "verify_s": round(verify_s, 2)}}
    log("throughput ...")
    results["throughput"] = measure_throughput(reader, ds, BatchedMemmapDataset(directory), workers_list, batches,
                                               repeats)
    log("elastic 2 -> 4 ranks at 50% ...")
    results["elastic"], states = measure_elastic(reader, ds)
    log("resume ...")
    results["resume_s"] = measure_resume(reader, ds, workers_list, states["torchrt"], states["stateful_dataloader"],
                                         trials=5)
    w = str(args.workers)
    results["goals"] = {
        "throughput >= 1.0x DataLoader": results["throughput"][w]["ratio"] >= 1.0,
        "resume no slower than StatefulDataLoader": results["resume_s"][w]["torchrt"]
        <= results["resume_s"][w]["stateful_dataloader"],
        "elastic lost = duplicated = 0": results["elastic"]["torchrt"]["lost"] == 0
        and results["elastic"]["torchrt"]["duplicated"] == 0,
    }
    results["meta"] = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                       "command": " ".join([Path(sys.executable).name, *sys.argv]),
                       "machine": {**machine(), "numpy": np.__version__},
                       "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                       "elapsed_s": round(time.monotonic() - started, 1)}
    print(table(results), flush=True)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
