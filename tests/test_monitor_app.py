"""The monitor's server side against a real job: access, the websocket, /metrics, errors.

One real two-node torchrun job with a token (tests/monitor_env.py ``LiveJob``) runs for the whole
module; a monitor app over a :class:`~monitor.live_source.LiveSource` of it is served by
:class:`~monitor.serve.MonitorServer` on 0.0.0.0 (reachable from other machines, hence the
token) and reached over real HTTP and websocket connections on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from simple_websocket import Client
from simple_websocket import ConnectionError as Rejected

from monitor.app import MonitorOptions, close_app, create_app
from monitor.auth import COOKIE, InsecureBindError, session_value
from monitor.live import MAX_EVENTS, Broadcaster, PageWant, _Socket
from monitor.serve import MonitorServer
from monitor.live_source import LiveSource
from torchrt.contract import EventType

from tests.helpers import wait_until
from tests.monitor_env import RANKS, LiveJob

# one worker runs this module, so its module-scoped `monitor` is built once (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("monitor_app")

TOKEN = "s3cret-monitor-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Monitor:
    """A served monitor app and its URL on loopback (whatever address it binds)."""

    def __init__(self, job: LiveJob, server: MonitorServer) -> None:
        self.job, self.server = job, server
        self.url = f"http://127.0.0.1:{server.port}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url + path, headers=headers or {}, method=method, data=body)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        status, _, body = self.get(path, headers if headers is not None else BEARER)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def ws(self, headers: dict[str, str] | None = None) -> Client:
        return Client.connect(self.url.replace("http", "ws") + "/api/v1/ws",
                              headers=headers if headers is not None else BEARER)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitor]:
    with LiveJob(tmp_path_factory.mktemp("monitor-app"), token=TOKEN) as job:
        job.wait_running(steps=2)
        app = create_app(LiveSource(job.endpoint, token=TOKEN), MonitorOptions(token=TOKEN))
        with MonitorServer(app, host="0.0.0.0") as server:
            yield Monitor(job, server)


def messages(ws: Client, seconds: float) -> list[dict[str, Any]]:
    """Every message ``ws`` receives during the next ``seconds``."""
    out, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        text = ws.receive(timeout=left)
        if text is not None:
            out.append(json.loads(text))
    return out


def receive_until(ws: Client, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        text = ws.receive(timeout=left)
        if text is not None and predicate(message := json.loads(text)):
            return message
    raise AssertionError(f"no websocket message with {what} within {timeout}s")


def burst(job: LiveJob, count: int, marker: str) -> float:
    """``count`` logged events at once, recorded on the coordinator's loop; when they were."""
    coordinator = job.coordinator
    assert coordinator is not None
    at = time.time()
    coordinator.read_view(lambda _view: [coordinator.events.emit(EventType.ERROR, where=marker, error=f"{marker} {i}")
                                         for i in range(count)])
    return at


# ------------------------------------------------------------------ access
def test_binding_beyond_loopback_needs_a_token(monitor: Monitor) -> None:
    app = create_app(LiveSource(monitor.job.endpoint, token=TOKEN), MonitorOptions(token=None))
    server = MonitorServer(app, host="0.0.0.0")
    try:
        with pytest.raises(InsecureBindError, match="binds 0.0.0.0, reachable from other machines: it needs a token"):
            server.start()
        assert server.port == 0  # nothing listened
    finally:
        close_app(app)


@pytest.mark.parametrize("path", ["/", "/tasks", "/api/v1/snapshot", "/api/v1/settings", "/metrics",
                                  "/api/v1/pages/workers/workers"])
def test_every_route_needs_the_token_off_loopback(monitor: Monitor, path: str) -> None:
    status, headers, body = monitor.get(path)
    if path.startswith(("/api/", "/metrics")):
        assert status == 401 and "token is required" in json.loads(body)["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    else:  # a page sends the browser to the login form, and back afterwards
        assert status == 302 and headers["Location"] == f"/login?next={path}"
    assert monitor.get(path, {"Authorization": "Bearer wrong"})[0] in (302, 401)
    assert monitor.get(path, BEARER)[0] == 200
    assert monitor.get(path, {"Cookie": f"{COOKIE}={session_value(TOKEN)}"})[0] == 200
    assert monitor.get(path, {"Cookie": f"{COOKIE}={TOKEN}"})[0] in (302, 401)  # the cookie is not the token


def test_websocket_needs_the_token(monitor: Monitor) -> None:
    with pytest.raises(Rejected, match="401"):
        monitor.ws(headers={})
    ws = monitor.ws(headers={"Cookie": f"{COOKIE}={session_value(TOKEN)}"})
    try:
        assert json.loads(ws.receive(timeout=10))["kind"] == "hello"
    finally:
        ws.close()


def test_login_form_sets_a_strict_httponly_cookie_and_never_echoes_the_token(monitor: Monitor) -> None:
    status, _, page = monitor.get("/login?next=/tasks")
    assert status == 200 and b'name="token"' in page
    typed = "not-the-token-" + TOKEN[::-1]
    status, headers, page = monitor.get("/login", method="POST", body=f"token={typed}&next=/tasks".encode(),
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401 and typed.encode() not in page and TOKEN.encode() not in page
    assert "Set-Cookie" not in headers
    status, headers, page = monitor.get("/login", method="POST", body=f"token={TOKEN}&next=//evil.example/".encode(),
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and headers["Location"] == "/"  # no open redirect
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}={session_value(TOKEN)};") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie


def test_taking_stacks_is_a_post_that_needs_the_token(monitor: Monitor) -> None:
    body, json_type = json.dumps({"rank": None}).encode(), {"Content-Type": "application/json"}
    status, _, _ = monitor.get("/api/v1/stacks", json_type, method="POST", body=body)
    assert status == 401
    status, _, _ = monitor.get("/api/v1/stacks", {**BEARER, **json_type, "Origin": "http://evil.example"},
                               method="POST", body=body)
    assert status == 403  # another site's page, even with the browser's credentials
    status, _, answer = monitor.get("/api/v1/stacks", {**BEARER, **json_type}, method="POST", body=body)
    assert status == 200, answer[:500]
    assert json.loads(answer)["ranks"] == RANKS


def test_no_secret_in_settings_or_snapshot(monitor: Monitor) -> None:
    settings = monitor.json("/api/v1/settings")
    assert settings["monitor_url"] == monitor.server.url and "tensorboard_url" in settings
    for path in ("/api/v1/settings", "/api/v1/snapshot", "/metrics", "/"):
        assert TOKEN.encode() not in monitor.get(path, BEARER)[2]


# ------------------------------------------------------------------ errors
def test_unknown_page_is_a_real_404_and_api_errors_are_json(monitor: Monitor) -> None:
    status, headers, body = monitor.get("/no-such-page", BEARER)
    assert status == 404 and headers["Content-Type"].startswith("text/html") and b"/no-such-page" in body
    status, headers, body = monitor.get("/api/v1/no/such/route", BEARER)
    assert status == 404 and "error" in json.loads(body)
    status, _, body = monitor.get("/api/v1/pages/workers/workers?limit=many", BEARER)
    assert status == 400 and json.loads(body)["key"] == "limit"
    status, headers, body = monitor.get("/api/v1/snapshot", BEARER, method="DELETE")
    assert status == 405 and "error" in json.loads(body)
    assert monitor.get("/favicon.ico")[0] == 200  # open: the login page shows it too


def test_pages_carry_a_strict_content_security_policy(monitor: Monitor) -> None:
    status, headers, _ = monitor.get("/", BEARER)
    assert status == 200
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy


# ------------------------------------------------------------------ /metrics
def test_metrics_parse_and_show_the_job(monitor: Monitor) -> None:
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, headers, body = monitor.get("/metrics", BEARER)
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body.decode()) for s in family.samples}

    def complete(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
        return bool(found.get(("torchrt_checkpoints_committed_total", ()))
                    and any(name == "torchrt_barrier_wait_seconds" for name, _ in found))

    samples = wait_until(lambda: complete(found := scrape()) and found, 60,
                         "a committed checkpoint and a barrier in /metrics", interval=0.2)
    assert samples[("torchrt_workers", (("state", "running"),))] == RANKS
    assert samples[("torchrt_world_size", ())] == RANKS
    assert samples[("torchrt_samples_per_second", ())] > 0
    assert samples[("torchrt_step_seconds", (("stat", "median"),))] > 0
    assert samples[("torchrt_checkpoints_committed_total", ())] >= 1
    assert samples[("torchrt_checkpoints_restores_total", ())] == 0  # the job has not gone back
    assert samples[("torchrt_checkpoint_mbytes_per_second", ())] > 0
    assert samples[("torchrt_events_total", ())] > 10
    assert ("torchrt_node_cpu_percent", (("stat", "max"),)) in samples
    barrier = next(labels for name, labels in samples if name == "torchrt_barrier_wait_seconds")
    assert dict(barrier)["barrier"].startswith("epoch-") and dict(barrier)["quantile"] in ("0.5", "1")


# ------------------------------------------------------------------ websocket
def test_websocket_says_hello_then_updates_live_after_an_event(monitor: Monitor) -> None:
    ws = monitor.ws()
    try:
        hello = json.loads(ws.receive(timeout=10))
        assert hello["kind"] == "hello" and hello["mode"] == "live" and isinstance(hello["seq"], int)
        ws.send(json.dumps({"want": {"pages": [{"part": "workers", "kind": "workers", "offset": 0, "limit": 2}]}}))
        key = "workers/workers?offset=0&limit=2"
        first = receive_until(ws, lambda m: m["kind"] == "update" and key in m["pages"], 10, "the page wanted")
        page = first["pages"][key]
        assert page["total"] == RANKS and len(page["items"]) == 2
        assert first["snapshot"]["workers"]["by_state"]["running"] == RANKS
        sent = burst(monitor.job, 1, "live-update")
        update = receive_until(ws, lambda m: any(e.get("where") == "live-update" for e in m.get("events", [])),
                               10, "the event")
        assert update["seq"] > first["seq"] and update["ts"] >= sent
        assert key in update["pages"]
        ws.send("not json")
        error = receive_until(ws, lambda m: m["kind"] == "error", 10, "an error")
        assert error["key"] == "want"
    finally:
        ws.close()


def test_a_burst_of_events_is_coalesced_to_at_most_ten_messages_a_second(monitor: Monitor) -> None:
    ws = monitor.ws()
    try:
        assert json.loads(ws.receive(timeout=10))["kind"] == "hello"
        messages(ws, 0.5)  # the first update
        count = 1000
        seen: list[dict[str, Any]] = []

        def through_the_burst(message: dict[str, Any]) -> bool:
            seen.append(message)
            return any(e.get("error") == f"burst {count - 1}" for e in message.get("events", []))

        burst(monitor.job, count, "burst")
        receive_until(ws, through_the_burst, 30, "the burst's last event")
        seen += messages(ws, 1.0)  # and the updates of the second after it
    finally:
        ws.close()
    assert len(seen) <= (seen[-1]["ts"] - seen[0]["ts"]) * 10 + 1, len(seen)
    gaps = [b["ts"] - a["ts"] for a, b in zip(seen, seen[1:])]
    assert all(gap >= 0.09 for gap in gaps), gaps
    # Each update holds at most MAX_EVENTS of them, the newest; the others are counted as missed.
    marked = [e for m in seen for e in m["events"] if e.get("where") == "burst"]
    assert marked and marked[-1]["error"] == f"burst {count - 1}"
    assert all(len(m["events"]) <= MAX_EVENTS for m in seen)
    assert sum(len(m["events"]) + m.get("events_missed", 0) for m in seen) >= count


def test_a_socket_that_does_not_read_keeps_one_update_with_every_newer_event() -> None:
    sock = _Socket()
    sock.offer(1, 1.0, '{"a": 1}', [{"seq": 1}], 0, {})
    sock.offer(2, 2.0, '{"a": 2}', [{"seq": n} for n in range(2, 2 + MAX_EVENTS)], 0, {"p": "{}"})
    [text] = sock.take(timeout=0)
    update = json.loads(text)
    assert update["seq"] == 2 and update["snapshot"] == {"a": 2} and update["pages"] == {"p": {}}
    assert [e["seq"] for e in update["events"]] == list(range(2, 2 + MAX_EVENTS)) and update["events_missed"] == 1
    assert sock.take(timeout=0) == []


def test_request_rate_is_a_series_of_the_monitor(monitor: Monitor) -> None:
    for _ in range(5):
        monitor.get("/api/v1/snapshot", BEARER)
    points = wait_until(lambda: (p := monitor.json("/api/v1/series?part=monitor&subject=requests&measure=per_s"))
                        and p["t"] and p, 5, "a second of monitor requests")
    assert points["resolution_s"] == 1 and sum(points["last"]) >= 5
    assert "requests/per_s" in monitor.json("/api/v1/snapshot")["snapshot"]["series"]["monitor"]["last"]


class _PagesThatWait:
    """A view source whose page reads wait until the test lets them go (a ViewSource's parts the
    broadcaster uses: snapshot, page, subscribe)."""

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.go = threading.Semaphore(0)  # one release lets one page read go

    def snapshot(self, at: float | None = None) -> dict[str, Any]:
        return {"now": time.time()}

    def page(self, part: str, kind: str, offset: int, limit: int, at: float | None = None) -> dict[str, Any]:
        self.reading.set()
        assert self.go.acquire(timeout=30), "the test never let the read go"
        return {"part": part, "kind": kind, "items": [], "total": 0}

    def subscribe(self, listener: Any) -> Any:
        return lambda: None


def test_a_want_that_changes_while_an_update_is_built_keeps_the_broadcaster_alive() -> None:
    """A page changing its wants (the Tasks page paging) while the broadcaster reads the pages of
    the previous ones: that update carries the pages it read, the next one the new wants. It used
    to look up the new wants in what it had read, die of the KeyError, and stop every socket's
    updates for good."""
    source = _PagesThatWait()
    broadcaster = Broadcaster(source)  # type: ignore[arg-type]
    try:
        sock = broadcaster.connect()
        first, second = PageWant("workers", "workers", 0, 16), PageWant("workers", "workers", 16, 16)
        broadcaster.want(sock, (first,))
        assert source.reading.wait(30), "the broadcaster never read the wanted page"
        broadcaster.want(sock, (second,))  # while the read of `first` is in progress
        source.go.release()  # that read alone: the next update's reads wait until the first is taken
        keys: list[set[str]] = []

        def updated(key: str) -> bool:
            keys.extend(set(json.loads(text).get("pages", {})) for text in sock.take(timeout=0.5))
            return key in set().union(*keys)

        wait_until(lambda: updated(first.key), 30, "the update with the page that was read")
        assert keys == [{first.key}]
        source.go.release(1000)
        wait_until(lambda: updated(second.key), 30, "an update with the new wants' page")
    finally:
        broadcaster.close()
