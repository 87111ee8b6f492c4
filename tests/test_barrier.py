"""torchrt.barrier across real processes: nobody leaves a call before everybody arrived."""

from __future__ import annotations

import os
import random
import time
from datetime import timedelta
import torch.distributed as dist
import torch.multiprocessing as mp

from torchrt.contract import EventType

from tests.helpers import free_port, spawn_ranks

ROUNDS = 150


def _join(rank: int, world: int, port: int, env: dict[str, str] | None = None) -> dist.TCPStore:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      **(env or {}))
    for key in [k for k in os.environ if k.startswith("TORCHRT_")]:
        del os.environ[key]
    import torchrt

    if "TORCHELASTIC_RESTART_COUNT" in os.environ:  # a generation of workers on an agent's store
        agent = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
        attempt = dist.PrefixStore(f"/worker/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", agent)
        dist.init_process_group("gloo", store=attempt, rank=rank, world_size=world)
    torchrt.init(backend="gloo", timeout=timedelta(seconds=60))  # else rank 0 hosts the store here
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))


def _worker(rank: int, world: int, port: int, rounds: int, env: dict[str, str], failures) -> None:
    """``rounds`` barriers with random arrival order; each rank checks that everybody arrived."""
    import torchrt

    store = _join(rank, world, port, env)
    generation = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    rng = random.Random(rank)
    try:
        for i in range(rounds):
            time.sleep(rng.random() * 0.003)  # jitter, so that the last to arrive varies
            store.set(f"arrived/{generation}/{i}/{rank}", "1")
            torchrt.barrier("t", timeout=timedelta(seconds=20))
            if not store.check([f"arrived/{generation}/{i}/{r}" for r in range(world)]):
                failures.put(f"generation {generation}: rank {rank} left barrier {i} before every rank arrived")
                return
        torchrt.barrier("end")  # nobody lists keys while another rank may still be in "t"
        left = [k for k in store.list_keys() if k.endswith("barrier/t")]
        if f"torchrt/restart{generation}/barrier/t" not in left or len(left) != int(generation) + 1:
            failures.put(f"rank {rank}: barrier keys after {rounds} calls: {left}")
    except Exception as e:
        failures.put(f"generation {generation}: rank {rank}: {e}")
    finally:
        dist.destroy_process_group()


def _run(worker, world: int, port: int, *args) -> list[str]:
    """The problems ``worker(rank, world, port, *args, failures)`` reported from every rank."""
    failures = mp.get_context("spawn").SimpleQueue()
    spawn_ranks(worker, world, *args, failures, port=port)
    problems = []
    while not failures.empty():
        problems.append(failures.get())
    return problems


def test_barrier_holds_everyone_until_the_last_arrives_and_keeps_one_key():
    assert _run(_worker, 3, free_port(), ROUNDS, {}) == []


def test_barrier_of_a_restarted_generation_does_not_meet_the_previous_counters():
    """Plain torchrun restarts workers against the same agent store: generation 1 must not pair
    with generation 0's counts (with one key per name it was released at once; before that, the
    counter barrier hung). The agent's store is played by this test's TCPStore; each generation's
    process group lives under its own prefix of it, as torchrun's workers' do."""
    agent_store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    for generation in ("0", "1"):
        env = {"TORCHELASTIC_RESTART_COUNT": generation}
        assert _run(_worker, 2, agent_store.port, 5, env) == []


def _timeout_worker(rank: int, world: int, port: int, failures) -> None:
    import torchrt

    store = _join(rank, world, port)
    try:
        if rank == 1:  # never comes to the barrier; waits until rank 0 has given up
            store.wait(["rank0-done"])
            return
        try:
            torchrt.barrier("lonely", timeout=timedelta(seconds=1))
            failures.put("rank 0 passed a barrier rank 1 never reached")
        except torchrt.BarrierError as e:
            if "'lonely'" not in str(e) or "2 ranks" not in str(e):
                failures.put(f"unclear error: {e}")
        started = time.monotonic()
        try:
            torchrt.barrier("lonely", timeout=timedelta(seconds=5))
            failures.put("a timed-out barrier name was used again")
        except torchrt.BarrierError as e:
            if time.monotonic() - started > 1 or "cannot be used again" not in str(e):
                failures.put(f"second call did not fail at once: {e}")
        store.set("rank0-done", "1")
    finally:
        dist.destroy_process_group()


def test_barrier_timeout_names_the_barrier_and_retires_it():
    assert _run(_timeout_worker, 2, free_port()) == []


def test_a_barrier_report_carries_the_windows_median_99th_percentile_and_maximum(recorder):
    from torchrt.distributed import _BarrierReport

    report = _BarrierReport("step-#")
    report.reported_at = float("inf")  # hold the window: report() below sends it
    for ms in range(1, 201):  # 1 .. 200 ms
        report.add(4, ms / 1000)
    report.report(0.0)
    [event] = recorder.of(EventType.BARRIER)
    assert (event["completions"], event["p50_us"], event["p99_us"], event["max_us"]) == (200, 101_000.0,
                                                                                        198_000.0, 200_000.0)
