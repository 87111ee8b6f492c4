"""Real ``torchrun --rdzv-backend=torchrt`` jobs on loopback: gloo all_reduce workers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil

import pytest

from torchrt.coordinator import ping

from tests.agents import Agent
from tests.helpers import events, free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def job(tmp_path):
    agents: list[Agent] = []
    endpoint = f"127.0.0.1:{free_port()}"
    run_dir, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()

    def start(nnodes: str, **kw) -> Agent:
        agent = Agent(endpoint, nnodes, run_dir, results, **kw)
        agents.append(agent)
        return agent

    start.endpoint, start.run_dir, start.results = endpoint, run_dir, results
    yield start
    for agent in agents:
        agent.close()


def results(results_dir: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in results_dir.glob("rank*.json")), key=lambda r: r["rank"])


def assert_finished(agent: Agent, timeout: float = 120) -> None:
    rc = agent.wait(timeout)
    assert rc == 0, f"agent exited {rc}; log:\n{agent.log()}"


def test_one_agent_two_workers(job):
    agent = job("1")
    assert_finished(agent)
    got = results(job.results)
    assert [r["rank"] for r in got] == [0, 1]
    assert {(r["world_size"], r["backend"], r["round"]) for r in got} == {(2, "gloo", 1)}


def test_two_agents_two_workers_each(job):
    agents = [job("2"), job("2")]
    for agent in agents:
        assert_finished(agent)
    got = results(job.results)
    assert [r["rank"] for r in got] == [0, 1, 2, 3]
    assert {r["world_size"] for r in got} == {4}
    assert len({r["node_id"] for r in got}) == 2
    kinds = [e["type"] for e in events(job.run_dir)]
    assert kinds.count("round_completed") == 1 and kinds.count("worker_started") == 4
    assert "barrier" in kinds and "rendezvous_closed" in kinds


def test_scale_up_when_second_agent_arrives(job):
    first = job("1:2", conf={"last_call_timeout": "0"}, env={"STEPS": "400", "STEP_SECONDS": "0.05"})
    wait_until(lambda: [e for e in events(job.run_dir, "worker_started")], 60, "the first node's workers")
    second = job("1:2", conf={"is_host": "false"}, env={"STEPS": "400", "STEP_SECONDS": "0.05"})
    assert_finished(first)
    assert_finished(second)
    rounds = events(job.run_dir, "round_completed")
    assert [r["world_size"] for r in rounds] == [1, 2]
    assert rounds[1]["reason"].startswith("scale-up")
    got = results(job.results)
    assert [r["rank"] for r in got] == [0, 1, 2, 3] and {r["round"] for r in got} == {2}


def test_survivor_reforms_and_finishes_after_sigkill_of_other_node(job):
    env = {"STEPS": "200", "STEP_SECONDS": "0.05"}
    host = job("1:2", max_restarts=3, conf={"last_call_timeout": "5"}, env=env)
    wait_until(lambda: ping(job.endpoint), 60, "the first agent's coordinator")
    victim = job("1:2", max_restarts=3, conf={"is_host": "false"}, env=env)

    def both_nodes_running() -> dict | None:
        """The round of both nodes once its four workers run (on a loaded machine the host may first
        have formed a round alone, its last call over before the victim's torchrun was up)."""
        rounds = [e for e in events(job.run_dir, "round_completed") if len(e["participants"]) == 2]
        started = [e for e in events(job.run_dir, "worker_started") if rounds and e["round"] == rounds[-1]["round"]]
        return rounds[-1] if len(started) == 4 else None

    victim_node = wait_until(both_nodes_running, 90, "a round of both nodes with its four workers")["participants"][1]
    victim.kill()
    assert_finished(host)
    dead = events(job.run_dir, "node_dead")
    assert [e["node"] for e in dead] == [victim_node]
    last = events(job.run_dir, "round_completed")[-1]
    assert last["world_size"] == 1 and victim_node not in last["participants"]
    got = results(job.results)
    assert [r["rank"] for r in got] == [0, 1] and {r["world_size"] for r in got} == {2}


def test_worker_crash_restarts_and_completes(job, tmp_path):
    env = {"CRASH_ONCE_FILE": str(tmp_path / "crashed"), "STEPS": "20"}
    agents = [job("2", max_restarts=2, env=env), job("2", max_restarts=2, env=env)]
    for agent in agents:
        assert_finished(agent)
    assert (tmp_path / "crashed").exists()
    got = results(job.results)
    assert [r["rank"] for r in got] == [0, 1, 2, 3]
    assert len({r["round"] for r in got}) == 1 and got[0]["round"] >= 2, "all workers on one generation"
    rounds = events(job.run_dir, "round_completed")
    assert all(r["world_size"] == 2 for r in rounds)
    causes = {e["reason"] for e in events(job.run_dir, "restart")}
    assert "local workers failed" in causes, causes


def test_foreign_run_id_is_rejected(job):
    first = job("1", run_id="alpha", env={"STEPS": "400", "STEP_SECONDS": "0.05"})
    wait_until(lambda: events(job.run_dir, "worker_started"), 60, "the first job's workers")
    intruder = job("1", run_id="beta", conf={"is_host": "false"})
    rc = intruder.wait(60)
    assert rc != 0
    log = intruder.log()
    assert "NodeRejectedError" in log and "'beta'" in log and "'alpha'" in log
    assert [e for e in events(job.run_dir, "node_rejected") if "'beta'" in e["error"]]
    assert_finished(first)


def test_workers_exit_when_their_agent_is_killed(job):
    agent = job("1", env={"STEPS": "4000", "STEP_SECONDS": "0.05"})
    started = wait_until(lambda: len(events(job.run_dir, "worker_started")) == 2 and
                         events(job.run_dir, "worker_started"), 60, "both workers")
    pids = [e["pid"] for e in started]
    agent.proc.send_signal(signal.SIGKILL)  # the agent only, not its workers
    agent.proc.wait(10)
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                               for pid in pids), 15, "the orphaned workers to exit")
