"""``--rdzv-conf`` of the torchrt backend: torch's documented keys, strict values, token files, IPv6."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters

from torchrt.contract import JOB_DEFAULTS
from torchrt.coordinator import Coordinator, CoordinatorConfig, RoundSettings, ping
from torchrt.errors import EndpointError, RendezvousConfigError, TokenFileError
from torchrt.protocol import parse_endpoint
from torchrt.rendezvous import options as options_module
from torchrt.rendezvous.options import RendezvousOptions

from tests.agents import EXAMPLE, REPO
from tests.helpers import free_port


def options(endpoint: str = "127.0.0.1:1", **conf: str) -> RendezvousOptions:
    return RendezvousOptions.from_params(RendezvousParameters("torchrt", endpoint, "job", 1, 1, **conf))


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("key, value, expected", [
    ("join_timeout", "inf", "expected a finite number > 0, got inf"),
    ("join_timeout", "nan", "expected a finite number > 0, got nan"),
    ("join_timeout", "0", "expected a number > 0, got 0"),
    ("connect_timeout", "nan", "expected a finite number > 0, got nan"),
    ("connect_timeout", "-1", "expected a number > 0, got -1"),
    ("heartbeat_interval", "inf", "expected a finite number > 0, got inf"),
    ("heartbeat_timeout", "inf", "expected a finite number > 0, got inf"),
    ("heartbeat_timeout", "0.4", "expected a number > heartbeat_interval (0.5), got 0.4"),
    ("last_call_timeout", "-inf", "expected a finite number >= 0, got -inf"),
    ("rejoin_timeout", "nan", "expected a finite number >= 0, got nan"),
    ("timeout", "inf", "expected a finite number > 0, got inf"),
    ("read_timeout", "0", "expected a number > 0, got 0"),
    ("close_timeout", "nan", "expected a finite number > 0, got nan"),
    ("keep_alive_interval", "-5", "expected a number > 0, got -5"),
    ("join_timeout", "abc", "expected a number > 0, got abc"),
])
def test_non_finite_and_non_positive_timeouts_are_refused_naming_the_key(key: str, value: str,
                                                                        expected: str) -> None:
    with pytest.raises(RendezvousConfigError) as info:
        options(**{key: value})
    # an alias is reported under torchrt's name for it: that is the setting that is wrong
    named = {"timeout": "join_timeout", "read_timeout": "connect_timeout",
             "keep_alive_interval": "heartbeat_interval"}.get(key, key)
    assert str(info.value) == f"--rdzv-conf {named}: {expected}"
    assert info.value.key == named


def test_unknown_keys_list_torchrt_and_c10d_keys() -> None:
    with pytest.raises(RendezvousConfigError, match="unknown --rdzv-conf key") as info:
        options(heartbeat_timout="3")
    accepted = str(info.value).split("accepted keys: ")[1].split(", ")
    assert {"heartbeat_timeout", "token_file", "close_timeout", "keep_alive_interval", "keep_alive_max_attempt",
            "read_timeout", "timeout", "use_libuv", "store_type", "join_timeout", "last_call_timeout",
            "is_host"} <= set(accepted)


# ------------------------------------------------------------------ torch's documented keys
def test_c10d_keys_map_to_their_torchrt_meaning() -> None:
    o = options(keep_alive_interval="2", keep_alive_max_attempt="4", read_timeout="7", timeout="60",
                last_call_timeout="0", is_host="false")
    assert (o.heartbeat_interval, o.heartbeat_timeout) == (2.0, 8.0)
    assert (o.connect_timeout, o.join_timeout, o.last_call_timeout, o.is_host) == (7.0, 60.0, 0.0, False)
    assert options(keep_alive_max_attempt="3").heartbeat_timeout == 3 * RendezvousOptions.heartbeat_interval
    # torchrun always passes timeout (900 unless given): an explicit join_timeout wins over it
    assert options(timeout="900", join_timeout="5").join_timeout == 5.0


@pytest.mark.parametrize("conf, match", [
    ({"keep_alive_interval": "1", "heartbeat_interval": "1"}, "keep_alive_interval: give heartbeat_interval or"),
    ({"read_timeout": "1", "connect_timeout": "1"}, "read_timeout: give connect_timeout or"),
    ({"keep_alive_max_attempt": "3", "heartbeat_timeout": "9"}, "keep_alive_max_attempt: give heartbeat_timeout"),
    ({"keep_alive_max_attempt": "1"}, "keep_alive_max_attempt: expected an integer >= 2, got 1"),
    ({"store_type": "etcd"}, "store_type: expected tcp or file, got etcd"),
    ({"use_libuv": "maybe"}, "use_libuv: expected true or false, got maybe"),
])
def test_c10d_keys_are_checked(conf: dict[str, str], match: str) -> None:
    with pytest.raises(RendezvousConfigError, match=match):
        options(**conf)


def test_c10d_keys_without_effect_are_logged_once(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(options_module, "_logged_no_effect", set())
    with caplog.at_level(logging.WARNING, logger=options_module.__name__):
        for _ in range(3):
            assert options(close_timeout="30", use_libuv="true", store_type="tcp") == options()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("has no effect with the torchrt backend" in line for line in lines)
    assert sorted(line.split("=")[0] for line in lines) == ["--rdzv-conf close_timeout", "--rdzv-conf store_type",
                                                            "--rdzv-conf use_libuv"]


# ------------------------------------------------------------------ token files
def test_token_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("tökén\n", encoding="utf-8")
    assert options(token_file=str(secret)).token == "tökén"
    with pytest.raises(RendezvousConfigError, match="token_file: give token or token_file, not both"):
        options(token="x", token_file=str(secret))
    with pytest.raises(TokenFileError, match="cannot be read"):
        options(token_file=str(tmp_path / "absent"))


# ------------------------------------------------------------------ endpoints
def test_ipv6_endpoints_parse_and_a_bare_one_is_refused_with_a_hint() -> None:
    assert parse_endpoint("[::1]:29400") == ("::1", 29400)
    assert parse_endpoint("[fe80::1%eth0]") == ("fe80::1%eth0", 29400)
    for bare in ("::1:29400", "::1"):
        with pytest.raises(EndpointError, match=r"an IPv6 address needs brackets, e\.g\. \[::1\]:29400"):
            parse_endpoint(bare)
    for bad in ("[::1", "[::1]29400", "[]:1", "host:", "host:http", "host:99999"):
        with pytest.raises(ValueError, match="bad endpoint"):
            parse_endpoint(bad)
    with pytest.raises(RendezvousConfigError, match=r"--rdzv-endpoint: expected HOST:PORT, got \"::1:29400\" "
                                                    r"\(an IPv6 address needs brackets"):
        options("::1:29400")


def test_a_coordinator_answers_at_an_ipv6_endpoint(tmp_path: Path) -> None:
    coordinator = Coordinator(CoordinatorConfig(run_dir=tmp_path / "run", host="::1", port=0))
    try:
        coordinator.start()
    except OSError as e:  # pragma: no cover - a machine without IPv6 loopback
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        reply = ping(f"[::1]:{coordinator.port}", timeout=5)
        assert reply is not None and reply["ok"]
    finally:
        coordinator.stop()


# ------------------------------------------------------------------ one default per setting
def test_each_default_lives_in_one_place(tmp_path: Path) -> None:
    round_settings, rdzv = RoundSettings(min_nodes=1, max_nodes=1), RendezvousOptions()
    for key in ("last_call_timeout", "rejoin_timeout", "join_timeout"):
        assert getattr(round_settings, key) == getattr(rdzv, key) == getattr(JOB_DEFAULTS, key), key
    assert rdzv.heartbeat_timeout == JOB_DEFAULTS.heartbeat_timeout
    assert (round_settings.backend, rdzv.pg_backend) == (JOB_DEFAULTS.backend,) * 2
    literal = [str(p.relative_to(REPO)) for p in (REPO / "torchrt").rglob("*.py")
               if "29400" in p.read_text() and p.name != "contract.py"]
    assert literal == [], f"the default port is written outside torchrt/contract.py in {literal}"


# ------------------------------------------------------------------ a real torchrun
@pytest.mark.parametrize("conf, key", [("join_timeout=inf", "join_timeout"),
                                       ("connect_timeout=nan", "connect_timeout")])
def test_torchrun_fails_fast_naming_the_key(tmp_path: Path, conf: str, key: str) -> None:
    argv = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend=torchrt",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=bad", "--nnodes=1", "--nproc-per-node=1",
            "--rdzv-conf", f"run_dir={tmp_path / 'run'},{conf}", str(EXAMPLE)]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "RESULT_DIR": str(tmp_path)})
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"RendezvousConfigError: --rdzv-conf {key}: expected a finite number > 0, got" in output, output[-3000:]
    assert elapsed < 60
    assert not (tmp_path / "run").exists()  # failed before any coordinator started
