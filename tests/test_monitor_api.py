"""The monitor's JSON API against a real coordinator fed by a real job, and against a finished run.

Live: a coordinator in this process with a token and two torchrun agents of two workers each
(tests/monitor_env.py LiveJob), watched through monitor.live_source.LiveSource over TCP, served by
the real app (monitor.app.create_app). Replay: the run directory of such a job after it ended
(the session's ``finished_run_dir``), through ReplaySource. The event index, the status op's
``points`` and the datasets' ``previews`` rows are also tested on their own, on real files.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from monitor.app import MonitorOptions, RequestRate, close_app, create_app
from monitor.fastpath import SnapshotFastPath
from monitor.logs import EventIndex, EventQuery
from monitor.live_source import CACHE_S, LiveSource
from monitor.replay_source import ReplaySource
from torchrt.contract import EVENT_LEVELS, EventType, Level, Op, Role
from torchrt.coordinator import Coordinator, CoordinatorClient, CoordinatorConfig
from torchrt.coordinator.run_dir import EventLog
from torchrt.errors import ProtocolError
from torchrt.view import JobView
from torchrt.view.alerts import AlertsFold

from tests.helpers import events as logged_events
from tests.helpers import wait_until
from tests.monitor_env import RANKS, LiveJob

pytestmark = pytest.mark.xdist_group("monitor")  # one session run for the monitor tests (tests/monitor_env.py)

TOKEN = "tok-9f3a-SECRET-never-shown"
API = "/api/v1"


class Api:
    """A test client of the real app, with the token when there is one; answers as JSON."""

    def __init__(self, source: Any, token: str | None = None) -> None:
        self.app = create_app(source, MonitorOptions(token=token))
        self.client = self.app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, status: int = 200) -> Any:
        response = self.client.get(API + path, headers=self.headers)
        assert response.status_code == status, (path, response.status_code, response.data[:500])
        assert response.is_json, (path, response.data[:200])
        return response.get_json()

    def text(self, path: str) -> str:
        return self.client.get(API + path, headers=self.headers).get_data(as_text=True)

    def post(self, path: str, body: Any, status: int = 200, auth: bool = True) -> Any:
        response = self.client.post(API + path, json=body, headers=self.headers if auth else {})
        assert response.status_code == status, (path, response.status_code, response.data[:500])
        return response.get_json()

    def close(self) -> None:
        close_app(self.app)


# ------------------------------------------------------------------ replay
@pytest.fixture(scope="module")
def replay(finished_run_dir):
    api = Api(ReplaySource(finished_run_dir))
    yield api
    api.close()


def test_a_replay_serves_the_runs_view_and_the_slider_shows_it_as_it_was(replay, finished_run_dir):
    answer = replay.get("/snapshot")
    assert answer["mode"] == "replay" and answer["at"] is None
    snapshot = answer["snapshot"]
    on_disk = json.loads((finished_run_dir / "state.json").read_text())  # what the coordinator wrote last
    assert {k: snapshot[k] for k in ("workers", "checkpoints", "datasets", "rendezvous")} == \
        {k: on_disk[k] for k in ("workers", "checkpoints", "datasets", "rendezvous")}
    assert snapshot["checkpoints"]["committed_total"] >= 2 and snapshot["workers"]["by_state"] == {"stopped": RANKS}
    first, last = answer["span"]
    commits = logged_events(finished_run_dir, EventType.CHECKPOINT_COMMITTED)
    assert first < commits[0]["ts"] < commits[1]["ts"] <= last

    def at(ts: float) -> dict[str, Any]:
        found = replay.get(f"/snapshot?at={ts!r}")
        assert found["at"] == ts
        return found["snapshot"]

    before, between, end = at(commits[0]["ts"] - 1e-3), at(commits[0]["ts"]), at(last)
    assert (before["checkpoints"]["committed_total"], between["checkpoints"]["committed_total"]) == (0, 1)
    assert before["seq"] < between["seq"] < end["seq"] == snapshot["seq"]
    assert between["workers"]["by_state"] == {"running": RANKS}  # the job was running then
    assert "committed/mb_s" not in before["series"].get("checkpoints", {}).get("last", {})  # no point of the future
    assert at(first)["workers"]["total"] == 0  # back to the start: the cursor starts again
    early = replay.get(f"/pages/workers/workers?at={commits[0]['ts']!r}")
    assert early["total"] == RANKS and all(r["state"] == "running" for r in early["items"])
    points = replay.get("/series?part=workers&subject=steps&measure=samples_per_s")
    second = points["t"][0] + 1.5  # the first second of the series is over, not the rest
    cut = replay.get(f"/series?part=workers&subject=steps&measure=samples_per_s&at={second!r}")
    assert len(points["t"]) > 2 and cut["t"] == points["t"][:1] and cut["last"] == points["last"][:1]
    assert replay.get("/pages/workers/workers?limit=2") == {**replay.get("/pages/workers/workers"),
                                                             "items": replay.get("/pages/workers/workers")["items"][:2]}


def test_the_event_log_filters_by_type_level_node_rank_and_text_and_pages_newest_first(replay, finished_run_dir):
    every = logged_events(finished_run_dir)
    page = replay.get("/events?limit=5")
    assert [e["seq"] for e in page["items"]] == [e["seq"] for e in every[::-1][:5]]
    assert page["total"] == len(every) and page["items"][0]["type"] == EventType.SHUTDOWN
    seen = [e["seq"] for e in page["items"]]
    while page["next_before"] is not None:  # every event once, by pages
        page = replay.get(f"/events?limit=17&before={page['next_before']}")
        seen += [e["seq"] for e in page["items"]]
    assert seen == [e["seq"] for e in reversed(every)]
    started = replay.get("/events?type=worker_started")
    assert started["total"] == RANKS and sorted(e["rank"] for e in started["items"]) == list(range(RANKS))
    assert [e["what"] for e in started["items"]] == [f"rank {e['rank']} started in round {e['round']} "
                                                     f"(pid {e['pid']}, {e['backend']})" for e in started["items"]]
    assert [e["rank"] for e in replay.get("/events?type=worker_started,worker_stopped&rank=2")["items"]] == [2, 2]
    node = started["items"][0]["node_id"]
    assert {e.get("node_id") or e.get("node") for e in replay.get(f"/events?node={node}&limit=500")["items"]} == {node}
    found = replay.get("/events?q=REQUESTED")  # the stack dump's reason, whatever the case
    assert [e["type"] for e in found["items"]] == [EventType.STACKS_DUMPED] and found["total"] is None
    assert all(e["level"] == "info" for e in replay.get("/events?limit=500")["items"])  # a run without problems
    assert replay.get("/events?level=error") == {"items": [], "total": 0, "next_before": None, "partial": False}
    middle = every[len(every) // 2]
    assert max(e["ts"] for e in replay.get(f"/events?limit=500&at={middle['ts']!r}")["items"]) <= middle["ts"]


def test_the_timeline_puts_rounds_checkpoints_and_dumps_on_one_axis(replay, finished_run_dir):
    items = replay.get("/timeline")["items"]
    assert [i["ts"] for i in items] == sorted(i["ts"] for i in items)
    kinds = [(i["kind"], i["type"]) for i in items]
    assert ("round", EventType.ROUND_COMPLETED) in kinds and ("alert", EventType.STACKS_DUMPED) in kinds
    commits = [i for i in items if i["type"] == EventType.CHECKPOINT_COMMITTED]
    assert len(commits) >= 2 and commits[0]["label"].startswith(f"checkpoint of step {commits[0]['step']} committed")
    assert items[0]["type"] == EventType.COORDINATOR_STARTED and items[-1]["type"] == EventType.SHUTDOWN
    window = replay.get(f"/timeline?since={commits[0]['ts']!r}&until={commits[1]['ts']!r}")["items"]
    assert [i["seq"] for i in window][0] == commits[0]["seq"] and window[-1]["seq"] == commits[1]["seq"]


def test_a_replay_has_its_dumps_but_takes_none_and_shows_no_previews(replay):
    [listed] = replay.get("/stacks")["items"]
    assert listed["reason"] == "requested" and listed["answered"] == list(range(RANKS))
    dump = replay.get(f"/stacks/{listed['request']}")
    assert dump["ranks"] == RANKS and sorted(r for g in dump["groups"] for r in g["ranks"]) == list(range(RANKS))
    assert {g["answer"] for g in dump["groups"]} == {"answered"} and dump["text"].startswith("stack dump 1 (requested)")
    assert "error" in replay.post("/stacks", {"rank": None}, status=409)
    assert replay.get("/datasets/digits/previews") == {"dataset": "digits", "items": [], "live_only": True}


def test_bad_parameters_are_a_400_naming_the_key_and_unknown_things_a_404(replay):
    for query, key in [("/events?limit=0", "limit"), ("/events?limit=501", "limit"), ("/events?limit=ten", "limit"),
                       ("/events?level=fatal", "level"), ("/events?type=nope", "type"), ("/events?rank=-1", "rank"),
                       ("/events?before=0", "before"), (f"/events?q={'x' * 201}", "q"), ("/snapshot?at=nan", "at"),
                       ("/snapshot?at=soon", "at"), ("/pages/workers/workers?limit=1001", "limit"),
                       ("/pages/workers/workers?offset=-3", "offset"), ("/series?part=workers", "subject"),
                       ("/series?part=workers&subject=steps&measure=step_ms&level=4", "level"),
                       ("/timeline?since=yesterday", "since")]:
        assert replay.get(query, status=400)["key"] == key, query
    for path in ["/nope", "/pages/workers/nope", "/pages/..%2F..%2Fetc/passwd", "/stacks/99999", "/stacks/0",
                 "/stacks/..%2F..%2Fstate", "/stacks/-1", "/datasets/nope/previews",
                 "/datasets/..%2F..%2Fevents.jsonl/previews", "/series?part=workers&subject=nope"]:
        assert "error" in replay.get(path, status=404), path
    assert replay.post("/stacks", "not an object", status=400)["key"] == "body"


def _without_monitor_series(answer: dict[str, Any]) -> dict[str, Any]:
    """A snapshot answer less the monitor's own requests/s (it moves on each second, whoever answers)."""
    answer["snapshot"]["series"].pop("monitor")
    return answer


def test_the_snapshot_fast_path_answers_as_the_flask_route_does_and_leaves_the_rest_to_it(replay, monkeypatch):
    fast = replay.app.wsgi_app
    assert isinstance(fast, SnapshotFastPath)
    flask_alone = Client(fast.app)
    to_flask: list[str] = []

    def flask(environ: dict[str, Any], start_response: Any) -> Any:
        to_flask.append(f"{environ['PATH_INFO']}?{environ['QUERY_STRING']}")
        return flask_alone.application(environ, start_response)

    monkeypatch.setattr(fast, "app", flask)
    served = replay.client.get(API + "/snapshot")
    assert to_flask == []  # answered in front of Flask
    by_flask = flask_alone.get(API + "/snapshot")
    assert served.status_code == by_flask.status_code == 200
    for answer in (served, by_flask):  # the lengths may differ: the requests/s series can roll over a second between
        assert answer.headers["Content-Length"] == str(len(answer.data))
    assert ({k: v for k, v in served.headers.items() if k != "Content-Length"}
            == {k: v for k, v in by_flask.headers.items() if k != "Content-Length"})
    assert served.headers["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in served.headers[
        "Content-Security-Policy"]
    assert _without_monitor_series(served.get_json()) == _without_monitor_series(by_flask.get_json())

    start = replay.get("/snapshot")["span"][0]
    assert replay.get(f"/snapshot?at={start}")["at"] == start  # a query: Flask's
    rebound = replay.client.get(API + "/snapshot", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403 and "loopback host name" in rebound.get_json()["error"]  # the gate: Flask's
    assert replay.client.head(API + "/snapshot").status_code == 200
    monkeypatch.setattr(ReplaySource, "snapshot", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("gone")))
    failed = replay.client.get(API + "/snapshot")
    assert failed.status_code == 500 and failed.get_json() == {"error": "internal error: RuntimeError"}
    assert to_flask == [f"{API}/snapshot?at={start}", f"{API}/snapshot?", f"{API}/snapshot?", f"{API}/snapshot?"]


def test_a_page_of_another_site_rebound_to_loopback_gets_no_job_data(replay):
    """DNS rebinding: without a token the monitor answers only under a loopback Host."""
    for path in ("/", "/tasks", API + "/settings", API + "/events", "/metrics"):
        response = replay.client.get(path, headers={"Host": "attacker.example:8080"})
        assert response.status_code == 403 and b"loopback host name" in response.data, path
        assert replay.client.get(path, headers={"Host": "localhost:8080"}).status_code == 200, path


def test_settings_name_the_run_and_versions(replay, finished_run_dir):
    settings = replay.get("/settings")
    assert settings["run_dir"] == str(finished_run_dir.resolve()) and settings["run_id"] == "monitor-test"
    assert settings["versions"]["torch"] and settings["versions"]["torchrt"]
    assert settings["config"]["job"]["min_nodes"] == 2 and settings["endpoint"].startswith("127.0.0.1:")
    assert "monitor_url" in settings and "tensorboard_url" in settings  # added by the app


# ------------------------------------------------------------------ live
class Live:
    def __init__(self, job: LiveJob, source: LiveSource, api: Api) -> None:
        self.job, self.source, self.api = job, source, api


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with LiveJob(tmp_path_factory.mktemp("live"), token=TOKEN) as job:
        job.wait_running(steps=3)
        source = LiveSource(job.endpoint, token=TOKEN)
        api = Api(source, token=TOKEN)
        try:
            yield Live(job, source, api)
        finally:
            api.close()


def test_a_live_job_shows_its_ranks_nodes_and_series_from_the_coordinator(live):
    answer = live.api.get("/snapshot")
    assert answer["mode"] == "live" and answer["connected"] and answer["snapshot"]["coordinator"]["token_required"]
    assert answer["snapshot"]["workers"]["by_state"] == {"running": RANKS}
    ranks = live.api.get("/pages/workers/workers?limit=3")
    assert ranks["total"] == RANKS and [r["rank"] for r in ranks["items"]] == [0, 1, 2]
    assert live.api.get("/pages/rendezvous/nodes")["total"] == 2
    first = live.api.get("/series?part=workers&subject=steps&measure=samples_per_s")
    assert first["resolution_s"] == 1 and first["t"]
    wait_until(lambda: live.api.get("/series?part=workers&subject=steps&measure=samples_per_s")["t"][-1] >
               first["t"][-1], 30, "a later second of the samples/s series")
    assert "error" in live.api.get("/series?part=workers&subject=nope", status=404)
    assert live.api.get(f"/snapshot?at={time.time()}", status=400)["key"] == "at"  # no slider live


def test_a_live_job_shows_the_latest_preview_of_each_rank(live):
    def previews() -> list[dict[str, Any]]:
        return live.api.get("/datasets/digits/previews")["items"]

    shown = wait_until(lambda: len(previews()) == RANKS and previews(), 60, "a preview of every rank")
    assert sorted(p["rank"] for p in shown) == list(range(RANKS))
    assert all(p["kind"] == "image" and base64.b64decode(p["png_b64"])[:4] == b"\x89PNG" and 0 <= p["label"] <= 9
               for p in shown)
    assert "error" in live.api.get("/datasets/nope/previews", status=404)


def test_a_stack_dump_taken_live_is_pushed_listed_and_read(live):
    pushed: list[dict[str, Any]] = []
    unsubscribe = live.source.subscribe(pushed.extend)
    try:
        assert live.api.post("/stacks", {"rank": None}, status=401, auth=False)  # the job has a token
        dump = live.api.post("/stacks", {"rank": 1})
        assert dump["ranks"] == 1 and dump["groups"][0]["ranks"] == [1] and dump["groups"][0]["answer"] == "answered"
        assert live.api.post("/stacks", {"rank": "all"}, status=400)["key"] == "rank"
        announced = wait_until(lambda: [e for e in pushed if e["type"] == EventType.STACKS_DUMPED], 10,
                               "the dump's event at the listener")
        assert announced[0]["request"] == dump["request"]
    finally:
        unsubscribe()
    assert dump["request"] in [d["request"] for d in live.api.get("/stacks")["items"]]
    again = live.api.get(f"/stacks/{dump['request']}")
    assert again["groups"] == dump["groups"] and again["path"] == f"stacks/{dump['request']}.json"


def test_the_live_event_log_follows_the_job(live):
    started = live.api.get("/events?type=worker_started")
    assert started["total"] == RANKS and {e["rank"] for e in started["items"]} == set(range(RANKS))
    newest = live.api.get("/events?limit=1")["items"][0]["seq"]
    live.job.take_stacks(0)  # an event the coordinator records now
    wait_until(lambda: live.api.get("/events?limit=1")["items"][0]["seq"] > newest, 10, "a newer event in the log")


def test_no_answer_of_the_api_shows_the_token(live):
    paths = ["/snapshot", "/settings", "/events?limit=500", "/timeline", "/stacks", "/pages/rendezvous/nodes",
             "/pages/workers/workers", "/pages/machines/machines", "/pages/alerts/recent", "/datasets/digits/previews"]
    for path in paths:
        text = live.api.text(path)
        assert text.startswith("{") and TOKEN not in text, path
    settings = live.api.get("/settings")
    assert settings["config"]["coordinator"]["token_required"] is True and settings["versions"]["coordinator"]


def test_a_thousand_api_requests_a_second_cost_the_coordinator_about_ten_status_ops(live, monkeypatch):
    coordinator = live.job.coordinator
    ops = []
    real = coordinator._op_status
    monkeypatch.setattr(coordinator, "_op_status", lambda *a: ops.append(time.monotonic()) or real(*a))
    started = time.monotonic()
    stop = started + 2.0
    answered = []

    def hammer() -> None:
        client = live.api.app.test_client()
        while time.monotonic() < stop:
            assert client.get(f"{API}/snapshot", headers=live.api.headers).status_code == 200
            answered.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started  # past the 2 s by the last requests' time
    assert len(answered) > 100 and len(ops) <= elapsed * 10 + 2, (len(answered), len(ops), elapsed)


class HeldStatus:
    """A live source whose status ops wait at a gate (then go to the coordinator as they are),
    counted: a refresh stays in flight for as long as a test holds the gate."""

    def __init__(self, source: LiveSource, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.held = 0  # status ops that waited at the closed gate
        self.answered = 0
        self._count = threading.Lock()
        real = source._client.request

        def request(op: str, *args: Any, **kwargs: Any) -> Any:
            if op != Op.STATUS:
                return real(op, *args, **kwargs)
            if not self.gate.is_set():
                with self._count:
                    self.held += 1
            assert self.gate.wait(30), "the test never opened the gate"
            try:
                return real(op, *args, **kwargs)
            finally:
                with self._count:
                    self.answered += 1

        monkeypatch.setattr(source._client, "request", request)

    def hold(self) -> None:
        """Close the gate and wait for a refresh to be held at it (the running job's reports
        keep changing the view, so the source refreshes within CACHE_S)."""
        self.gate.clear()
        wait_until(lambda: self.held >= 1, 10, "a status op of the source in flight")

    def release(self) -> None:
        self.gate.set()


def emit(job: LiveJob, marker: str) -> None:
    """One logged event, recorded on the coordinator's loop as the coordinator records them."""
    coordinator = job.coordinator
    coordinator.read_view(lambda _view: coordinator.events.emit(EventType.ERROR, where=marker, error=marker))


def in_thread(call: Any) -> tuple[threading.Event, list[Any]]:
    """``call()`` on a thread of its own: set when it returned, and what it returned."""
    done, result = threading.Event(), []
    threading.Thread(target=lambda: (result.append(call()), done.set()), daemon=True).start()
    return done, result


def test_a_listener_gets_a_new_event_at_once_and_the_fresh_snapshot_after(live, monkeypatch):
    source = LiveSource(live.job.endpoint, token=TOKEN)
    status = HeldStatus(source, monkeypatch)
    told: list[tuple[list[dict[str, Any]], int]] = []  # (events, status ops answered by then)
    source.subscribe(lambda events: told.append((events, status.answered)))
    try:
        status.hold()
        answered = status.answered
        emit(live.job, "told-at-once")
        wait_until(lambda: any(e.get("where") == "told-at-once" for events, _ in told for e in events), 10,
                   "the listener to be told the event while the refresh is held")
        assert status.answered == answered  # no status op answered in between: the event came in the push
        assert len(source.events(EventQuery(q="told-at-once"))["items"]) == 1  # and the log has it already
        status.release()
        wait_until(lambda: any(events == [] and n > answered for events, n in told), 10,
                   "the listener to be told again once the refresh is in")
    finally:
        status.release()
        source.close()


def test_a_request_during_a_refresh_gets_the_previous_snapshot_at_once(live, monkeypatch):
    source = LiveSource(live.job.endpoint, token=TOKEN, max_stale_s=60.0)  # the bound out of the way
    status = HeldStatus(source, monkeypatch)
    api = Api(source, token=TOKEN)
    try:
        source.page("workers", "workers", 0, 2)  # asked: a page the source keeps fresh
        status.hold()
        before = source.snapshot()  # the last one in: the refresher's next status op waits at the gate
        done, answer = in_thread(lambda: api.get("/snapshot")["snapshot"])
        assert done.wait(10), "the request waited for the refresh in flight"
        assert answer[0]["written_at"] == before["written_at"]
        done, again = in_thread(lambda: source.page("workers", "workers", 0, 2))
        assert done.wait(10), "a kept page waited for the refresh in flight"
        assert again[0]["total"] == RANKS and source.page("workers", "workers", 0, 2) is again[0]
        status.release()
        wait_until(lambda: api.get("/snapshot")["snapshot"]["written_at"] > before["written_at"], 10,
                   "the refreshed snapshot")
    finally:
        status.release()
        api.close()


def test_a_snapshot_older_than_the_staleness_bound_waits_for_the_refresh(live, monkeypatch):
    source = LiveSource(live.job.endpoint, token=TOKEN, max_stale_s=CACHE_S)  # a refresh starts past the bound
    status = HeldStatus(source, monkeypatch)
    try:
        before = source.snapshot()
        status.hold()
        done, answer = in_thread(source.snapshot)
        assert not done.wait(0.5), "a snapshot past the bound was served while its refresh was held"
        status.release()
        assert done.wait(10)
        assert answer[0] is not before and answer[0]["written_at"] > before["written_at"]
    finally:
        status.release()
        source.close()
    with pytest.raises(ValueError, match=r"max_stale_s: expected seconds >= CACHE_S"):
        LiveSource(live.job.endpoint, token=TOKEN, max_stale_s=CACHE_S / 2)


def test_the_snapshot_answer_is_encoded_once_per_refresh_not_per_request(live, monkeypatch):
    source = LiveSource(live.job.endpoint, token=TOKEN, max_stale_s=60.0)
    status = HeldStatus(source, monkeypatch)
    api = Api(source, token=TOKEN)
    encodes = []
    real = api.app.json.dumps
    monkeypatch.setattr(api.app.json, "dumps", lambda *a, **k: encodes.append(1) or real(*a, **k))
    # the monitor's own requests/s changes once a second, and with it the answer: held still here
    monkeypatch.setattr(RequestRate, "last", lambda _self: [1.0, 50.0])
    try:
        status.hold()  # no refresh lands: the snapshot stays the same object
        texts = {api.text("/snapshot") for _ in range(50)}
        assert len(encodes) == 1 and len(texts) == 1, (len(encodes), len(texts))
    finally:
        status.release()
        api.close()


# ------------------------------------------------------------------ the parts on their own
def test_the_status_op_serves_series_points_and_names_a_bad_ask(coordinator):
    observer = CoordinatorClient(coordinator.endpoint, role=Role.OBSERVER)
    observer.connect(timeout=5)
    try:
        now = time.time()
        for i in range(3):  # a user metric, as a worker's report would be folded in
            coordinator.read_view(lambda view, i=i: view.apply({"type": EventType.METRIC, "ts": now - 3 + i,
                                                                 "name": "train/loss", "value": float(i)}))
        reply = observer.request(Op.STATUS, points=[{"part": "metrics", "subject": "train/loss"},
                                                    {"part": "metrics", "subject": "train/loss", "level": 1}],
                                 timeout=10)
        assert [p["resolution_s"] for p in reply["points"]] == [1, 10] and reply["points"][0]["last"][:2] == [0, 1]
        for ask, message in [("loss", r"points: expected a list"), ([{"part": "metrics"}], r"points: expected text"),
                             ([{"part": "metrics", "subject": "train/loss", "level": "0"}], r"points: expected text"),
                             ([{"part": "metrics", "subject": "train/loss"}] * 17, r"points: expected at most 16"),
                             ([{"part": "metrics", "subject": "nope"}], r"series: no series 'nope'")]:
            with pytest.raises(ProtocolError, match=message):
                observer.request(Op.STATUS, points=ask, timeout=10)
    finally:
        observer.close()


def test_the_datasets_part_pages_the_latest_preview_of_each_rank():
    view = JobView()
    for ts, rank, index in [(1.0, 0, 5), (2.0, 1, 7), (3.0, 0, 9)]:
        view.apply({"type": EventType.DATA_PREVIEW, "ts": ts, "dataset": "digits", "rank": rank, "index": index,
                    "label": 1, "kind": "image", "png_b64": "AA=="})
    rows = view.page("datasets", "previews")["items"]
    assert [(r["dataset"], r["rank"], r["index"]) for r in rows] == [("digits", 0, 9), ("digits", 1, 7)]
    assert "preview" not in json.dumps(view.snapshot()["datasets"])  # the snapshot stays without them


def _log(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    """A real event log of ``count`` events of a few kinds (as the coordinator writes them)."""
    log = EventLog(tmp_path)
    kinds = [(EventType.WORKER_STARTED, {"node_id": "n1"}), (EventType.STEP_PROGRESS, {"node_id": "n2"}),
             (EventType.NODE_DEAD, {"node": "n1", "reason": "heartbeat timeout"}),
             (EventType.RANK_STRAGGLING, {"node_id": "n2", "ratio": 3.0})]
    written = [log.emit(kinds[i % 4][0], rank=i % 3, note=f"Entry {i}", **kinds[i % 4][1]) for i in range(count)]
    log.close()
    return written


def test_the_event_index_pages_a_long_log_in_bounded_memory_and_follows_it_as_it_grows(tmp_path):
    written = _log(tmp_path, 3000)
    index = EventIndex(tmp_path)
    seen, before = [], None
    while True:
        page = index.query(EventQuery(limit=250, before=before))
        seen += [e["seq"] for e in page["items"]]
        if page["next_before"] is None:
            break
        before = page["next_before"]
    assert seen == list(range(3000, 0, -1))
    assert len(index._marks) == 12  # one line in 256 indexed: what stays in memory of the file
    dead = index.query(EventQuery(level=Level.ERROR, limit=500))
    assert dead["total"] == 750 and {e["type"] for e in dead["items"]} == {EventType.NODE_DEAD}
    mixed = index.query(EventQuery(types=frozenset({EventType.WORKER_STARTED.value}), node="n1", rank=0, limit=500))
    assert [e["seq"] for e in mixed["items"]] == [e["seq"] for e in reversed(written)
                                                  if e["type"] == EventType.WORKER_STARTED and e["rank"] == 0]
    assert [e["seq"] for e in index.query(EventQuery(q="entry 2999"))["items"]] == [3000]
    assert index.query(EventQuery(limit=1, until=written[9]["ts"]))["items"][0]["seq"] <= 10
    with open(tmp_path / "events.jsonl", "a") as f:  # the coordinator appends; a line being written
        f.write(json.dumps({"seq": 3001, "ts": time.time(), "type": "shutdown"}) + "\n" + '{"seq": 3002, "ts"')
    assert index.query(EventQuery(limit=1))["items"][0]["seq"] == 3001
    index.add([{"seq": 3001, "type": "shutdown", "ts": 1.0}, {"seq": 3003, "type": "shutdown", "ts": 2.0}])
    assert [e["seq"] for e in index.query(EventQuery(limit=2))["items"]] == [3003, 3001]  # pushed past the file


def test_a_query_that_reads_too_much_answers_with_where_to_go_on(tmp_path, monkeypatch):
    _log(tmp_path, 2000)
    monkeypatch.setattr("monitor.logs.SCAN_BUDGET_BYTES", 20_000)
    first = EventIndex(tmp_path).query(EventQuery(q="no such text"))
    assert first["partial"] and first["items"] == [] and 1 < first["next_before"] < 2000
    rest = EventIndex(tmp_path).query(EventQuery(q="no such text", before=first["next_before"]))
    assert rest["next_before"] is None or rest["next_before"] < first["next_before"]


def test_without_a_run_directory_the_log_is_the_events_pushed_and_bounded():
    index = EventIndex(None, recent=10)
    index.add([{"seq": i, "ts": float(i), "type": EventType.NODE_DEAD.value, "node": "n1"} for i in range(1, 26)])
    page = index.query(EventQuery(limit=4, level=Level.ERROR))
    assert [e["seq"] for e in page["items"]] == [25, 24, 23, 22] and page["total"] == 10
    assert index.span() == (16.0, 25.0)


def test_every_problem_the_alerts_record_is_an_error_or_a_warning():
    problems = AlertsFold.types - {EventType.RANK_RECOVERED}
    assert all(EVENT_LEVELS.get(EventType(t)) in (Level.ERROR, Level.WARNING) for t in problems)
    assert EVENT_LEVELS[EventType.NODE_DEAD] is Level.ERROR and EventType.WORKER_STARTED not in EVENT_LEVELS


def test_a_live_source_serves_its_last_snapshot_while_the_coordinator_is_away_and_reconnects(tmp_path):
    first = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=0))
    first.start()
    source = LiveSource(first.endpoint)
    second = None
    try:
        assert source.connected and source.snapshot()["run"]["incarnations"] == 1
        first.stop()
        wait_until(lambda: not source.connected, 10, "the source to notice the coordinator went")
        assert source.snapshot()["run"]["incarnations"] == 1  # the last one it had
        second = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", port=first.port))  # started again
        second.start()
        wait_until(lambda: source.connected, 20, "the source to reconnect")
        wait_until(lambda: source.snapshot()["run"]["incarnations"] == 2, 10, "the new coordinator's view")
        restarted = source.events(EventQuery(types=frozenset({EventType.COORDINATOR_RESTARTED.value})))
        assert restarted["total"] == 1
    finally:
        source.close()
        if second is not None:
            second.stop()
