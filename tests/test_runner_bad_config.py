"""run_config on an invalid config: status 2, the message on stderr, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.runner import run_config
from torchrt.coordinator.client import ping

from tests.helpers import free_port


@pytest.mark.parametrize("overrides, key", [
    ([], "nodes.max"),                          # the file itself is bad
    (["nodes.max=2", "rendezvous.backend=mpi"], "rendezvous.backend"),  # a bad --set
])
def test_bad_config_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   overrides: list[str], key: str) -> None:
    (tmp_path / "train.py").write_text("raise SystemExit('must not run')\n")
    endpoint = f"127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    config = tmp_path / "bad.yaml"
    config.write_text(f"""
job: {{name: bad, run_dir: {run_dir}}}
nodes: {{min: 2, max: 1}}
rendezvous: {{endpoint: "{endpoint}", is_host: true}}
entrypoint: {{script: train.py}}
""")
    assert run_config(str(config), overrides) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"torchrt: {config}: {key}"), err
    assert "expected" in err
    assert ping(endpoint, timeout=0.5) is None
    assert not run_dir.exists()


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_config(str(tmp_path / "absent.yaml"), []) == 2
    assert "absent.yaml: (file): expected an existing config file" in capsys.readouterr().err


def test_run_dir_that_cannot_be_made_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run directory below a regular file cannot be created, root or not: status 2, one line."""
    (tmp_path / "train.py").write_text("raise SystemExit('must not run')\n")
    (tmp_path / "file").write_text("not a directory\n")
    endpoint = f"127.0.0.1:{free_port()}"
    config = tmp_path / "job.yaml"
    config.write_text(f"""
job: {{name: blocked, run_dir: {tmp_path / "file" / "run"}}}
rendezvous: {{endpoint: "{endpoint}"}}
entrypoint: {{script: train.py}}
""")
    assert run_config(str(config), []) == 2
    err = capsys.readouterr().err
    assert err == f"torchrt: run directory {tmp_path / 'file' / 'run'} cannot be written: Not a directory\n", err
    assert ping(endpoint, timeout=0.5) is None
