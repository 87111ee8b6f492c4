"""torchrt.config: strict YAML loading, overrides, and the torchrun command line built from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.runner import torchrun_argv
from torchrt.config import ConfigError, JobConfig, load_config

MINIMAL = "job: {name: demo}\nentrypoint: {script: train.py}\n"


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    return tmp_path


def write(directory: Path, text: str, name: str = "job.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_defaults(cfg_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHRT_RUNS_DIR", raising=False)
    config = load_config(write(cfg_dir, MINIMAL))
    assert (config.job.name, config.job.run_id, config.job.run_dir) == ("demo", "demo", "torchrt_runs/demo")
    assert config.job.max_restarts == 0
    assert (config.nodes.min, config.nodes.max, config.nodes.nproc_per_node) == (1, 1, 1)
    assert config.nodes.monitor_interval == 0.1
    r = config.rendezvous
    assert (r.endpoint, r.token, r.backend, r.is_host) == ("127.0.0.1:29400", None, "auto", None)
    assert (r.last_call_timeout, r.rejoin_timeout, r.join_timeout) == (1.0, 30.0, 900.0)
    assert (r.heartbeat_interval, r.heartbeat_timeout) == (0.5, 2.5)
    assert config.entrypoint.script == str((cfg_dir / "train.py").resolve())
    assert (config.entrypoint.module, config.entrypoint.args, config.entrypoint.env) == (None, [], {})


def test_derived_defaults_and_conversions(cfg_dir: Path) -> None:
    config = load_config(write(cfg_dir, """
job: {name: demo, run_id: r7}
nodes: {min: 2, monitor_interval: 1}
rendezvous: {heartbeat_interval: 1, heartbeat_timeout: 3}
entrypoint: {script: train.py, args: [--epochs, 3], env: {OMP_NUM_THREADS: 4}}
"""))
    assert config.job.run_dir.endswith("/r7")
    assert (config.nodes.min, config.nodes.max) == (2, 2)
    assert isinstance(config.nodes.monitor_interval, float) and config.nodes.monitor_interval == 1.0
    assert config.entrypoint.args == ["--epochs", "3"]
    assert config.entrypoint.env == {"OMP_NUM_THREADS": "4"}


def test_null_means_default(cfg_dir: Path) -> None:
    config = load_config(write(cfg_dir, MINIMAL + "nodes: {max: null}\nrendezvous:\n"))
    assert config.nodes.max == 1 and config.rendezvous.backend == "auto"


def test_overrides(cfg_dir: Path) -> None:
    path = write(cfg_dir, MINIMAL)
    config = load_config(path, ["nodes.max=2", "entrypoint.args=[a, b]", "rendezvous.is_host=false",
                                "rendezvous.token=s3cret"])
    assert config.nodes.max == 2
    assert config.entrypoint.args == ["a", "b"]
    assert config.rendezvous.is_host is False
    assert config.rendezvous.token == "s3cret"
    # an override can create a section the file does not have, and replaces file values
    assert load_config(path, ["job.max_restarts=3"]).job.max_restarts == 3


def test_script_resolves_next_to_config_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "cfg" / "both.py").write_text("")
    (tmp_path / "work" / "both.py").write_text("")
    (tmp_path / "work" / "cwd_only.py").write_text("")
    monkeypatch.chdir(tmp_path / "work")
    path = write(tmp_path / "cfg", "job: {name: x}\nentrypoint: {script: both.py}\n")
    assert load_config(path).entrypoint.script == str((tmp_path / "cfg" / "both.py").resolve())
    script = load_config(path, ["entrypoint.script=cwd_only.py"]).entrypoint.script
    assert script == str((tmp_path / "work" / "cwd_only.py").resolve())
    message = error_of(path, ["entrypoint.script=nowhere.py"])
    assert "entrypoint.script" in message and "expected an existing file" in message
    assert str(tmp_path / "cfg" / "nowhere.py") in message


def test_module_entrypoint(cfg_dir: Path) -> None:
    config = load_config(write(cfg_dir, "job: {name: x}\nentrypoint: {module: pkg.train, args: [--x]}\n"))
    assert (config.entrypoint.module, config.entrypoint.script) == ("pkg.train", None)


def test_example_config_parses_when_its_script_exists() -> None:
    example = Path(__file__).resolve().parents[1] / "configs" / "allreduce.yaml"
    if not (example.parent.parent / "examples" / "allreduce.py").is_file():
        pytest.skip("examples/allreduce.py is not written yet")
    config = load_config(example)
    assert (config.nodes.min, config.nodes.max, config.nodes.nproc_per_node) == (1, 2, 2)


# ------------------------------------------------------------------ errors
def test_missing_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.yaml")
    assert "expected an existing config file" in message


def test_unparseable_yaml_names_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "job:\n  name: x\n  bad: [1, 2\nnodes: {}\n"))
    assert "expected valid YAML" in message and "line 4" in message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "job: {name: x}\nnodes: {min: 1}\nnodes: {min: 2}\n"))
    assert "duplicate key 'nodes'" in message and "line 3" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "3\n"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    message = error_of(write(tmp_path, text))
    assert "(top level): expected a mapping of sections" in message


def test_unknown_section_lists_accepted(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL + "trainer: {lr: 1}\n"))
    assert ": trainer: unknown section; accepted sections: job, nodes, rendezvous, entrypoint" in message


def test_section_not_a_mapping(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL + "nodes: 4\n"))
    assert ": nodes: expected a mapping of keys, got 4" in message


def test_unknown_key_lists_accepted(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL + "rendezvous: {heartbeat_timout: 10}\n"))
    assert ": rendezvous.heartbeat_timout: unknown key; accepted keys: endpoint, token, token_file, backend" in message
    assert "heartbeat_timeout" in message


@pytest.mark.parametrize("override, key, expected", [
    ("nodes.max=true", "nodes.max", "expected an integer >= nodes.min (1), got true (boolean)"),
    ("nodes.min=1.5", "nodes.min", "expected an integer >= 1, got 1.5"),
    ("nodes.nproc_per_node='2'", "nodes.nproc_per_node", 'expected an integer >= 1, got "2"'),
    ("nodes.monitor_interval=yes", "nodes.monitor_interval", "expected a number > 0, got true (boolean)"),
    ("rendezvous.endpoint=29400", "rendezvous.endpoint", "expected a non-empty string, got 29400"),
    ("rendezvous.is_host=maybe", "rendezvous.is_host", 'expected true, false or null, got "maybe"'),
    ("entrypoint.args=--x", "entrypoint.args", 'expected a list of strings, got "--x"'),
    ("entrypoint.args=[a, true]", "entrypoint.args", "expected a list of strings"),
    ("entrypoint.env=[A]", "entrypoint.env", "expected a mapping of strings to strings"),
    ("job.name=[a]", "job.name", "expected a non-empty string"),
])
def test_wrong_type(cfg_dir: Path, override: str, key: str, expected: str) -> None:
    message = error_of(write(cfg_dir, MINIMAL), [override])
    assert f": {key} (from --set): {expected}" in message


def test_wrong_type_in_file_has_no_override_note(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL + "nodes: {min: true}\n"))
    assert message.endswith(": nodes.min: expected an integer >= 1, got true (boolean)")


def test_int_is_accepted_as_float(cfg_dir: Path) -> None:
    assert load_config(write(cfg_dir, MINIMAL), ["rendezvous.join_timeout=60"]).rendezvous.join_timeout == 60.0


@pytest.mark.parametrize("overrides, key, expected", [
    (["nodes.min=0"], "nodes.min", "expected an integer >= 1, got 0"),
    (["nodes.min=2", "nodes.max=1"], "nodes.max", "expected an integer >= nodes.min (2), got 1"),
    (["job.max_restarts=-1"], "job.max_restarts", "expected an integer >= 0, got -1"),
    (["nodes.monitor_interval=0"], "nodes.monitor_interval", "expected a number > 0, got 0"),
    (["rendezvous.backend=mpi"], "rendezvous.backend", 'expected one of auto, gloo, nccl, got "mpi"'),
    (["rendezvous.last_call_timeout=-0.5"], "rendezvous.last_call_timeout", "expected a number >= 0, got -0.5"),
    (["rendezvous.rejoin_timeout=-1"], "rendezvous.rejoin_timeout", "expected a number >= 0, got -1"),
    (["rendezvous.join_timeout=0"], "rendezvous.join_timeout", "expected a number > 0, got 0"),
    (["rendezvous.heartbeat_interval=0"], "rendezvous.heartbeat_interval", "expected a number > 0, got 0"),
    (["rendezvous.heartbeat_timeout=0.5"], "rendezvous.heartbeat_timeout",
     "expected a number > rendezvous.heartbeat_interval (0.5), got 0.5"),
    (["rendezvous.endpoint=host:http"], "rendezvous.endpoint", 'expected HOST:PORT, got "host:http"'),
    (["rendezvous.endpoint=host:99999"], "rendezvous.endpoint", "expected HOST:PORT"),
    (["rendezvous.token=a,b"], "rendezvous.token", "expected a non-empty string without commas"),
    (["job.run_dir=' runs'"], "job.run_dir",
     'expected a non-empty string without commas or leading/trailing spaces, got " runs"'),
    (["entrypoint.module=not-a-module", "entrypoint.script=null"], "entrypoint.module",
     "expected a dotted Python module name"),
])
def test_bad_value(cfg_dir: Path, overrides: list[str], key: str, expected: str) -> None:
    message = error_of(write(cfg_dir, MINIMAL), overrides)
    assert f": {key} (from --set): {expected}" in message


def test_missing_required_keys(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("")
    message = error_of(write(tmp_path, "entrypoint: {script: t.py}\n"))
    assert message.endswith(": job.name: required key is missing")
    message = error_of(write(tmp_path, "job: {name: x}\n"))
    assert ": entrypoint.script: required key is missing (or give entrypoint.module instead)" in message


def test_script_and_module_together(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL), ["entrypoint.module=pkg"])
    assert message.endswith(": entrypoint: expected exactly one of script or module, got both")


@pytest.mark.parametrize("override", ["nodes", "nodes.max", "max=2", "nodes..max=1", ".x=1", "nodes.=1"])
def test_bad_override_syntax(cfg_dir: Path, override: str) -> None:
    message = error_of(write(cfg_dir, MINIMAL), [override])
    assert f": --set {override}: expected section.key=value" in message


def test_override_value_not_yaml(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL), ["entrypoint.args=[a"])
    assert ": --set entrypoint.args=[a: expected valid YAML" in message


def test_unknown_override_section(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL), ["trainer.lr=1"])
    assert ": trainer: unknown section" in message


def test_override_into_non_mapping_section(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL + "nodes: [1]\n"), ["nodes.max=2"])
    assert ": nodes: expected a mapping of keys" in message


def test_sections_registry() -> None:
    assert list(JobConfig.sections()) == ["job", "nodes", "rendezvous", "entrypoint", "data", "checkpoint", "demo"]


# ------------------------------------------------------------------ torchrun argv
def test_torchrun_argv_script(cfg_dir: Path) -> None:
    config = load_config(write(cfg_dir, """
job: {name: demo, run_id: r1, run_dir: /tmp/runs/r1, max_restarts: 2}
nodes: {min: 1, max: 3, nproc_per_node: 4, monitor_interval: 0.5}
rendezvous: {endpoint: "node0:1234", token: s3cret, backend: gloo, join_timeout: 60}
entrypoint: {script: train.py, args: [--epochs, "5"]}
"""))
    script = str((cfg_dir / "train.py").resolve())
    assert torchrun_argv(config) == [
        sys.executable, "-m", "torch.distributed.run",
        "--rdzv-backend=torchrt", "--rdzv-endpoint=node0:1234", "--rdzv-id=r1",
        "--nnodes=1:3", "--nproc-per-node=4", "--max-restarts=2", "--monitor-interval=0.5",
        "--rdzv-conf",
        "run_dir=/tmp/runs/r1,token=s3cret,pg_backend=gloo,last_call_timeout=1.0,rejoin_timeout=30.0,"
        "join_timeout=60.0,heartbeat_interval=0.5,heartbeat_timeout=2.5,is_host=false",
        script, "--epochs", "5",
    ]


def test_torchrun_argv_module_and_is_host(cfg_dir: Path) -> None:
    config = load_config(write(cfg_dir, "job: {name: m, run_dir: runs/m}\n"
                                        "entrypoint: {module: pkg.train, args: [-x]}\n"))
    argv = torchrun_argv(config, is_host=None)
    assert argv[-3:] == ["--module", "pkg.train", "-x"]
    conf = argv[argv.index("--rdzv-conf") + 1]
    assert "token=" not in conf and "is_host" not in conf
    assert conf.startswith("run_dir=runs/m,pg_backend=auto,")


def test_torchrun_parses_the_argv_into_valid_options(cfg_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's own parser and RendezvousParameters, then torchrt's strict options, accept the argv."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else config_from_args sets it in this process
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.run import config_from_args, get_args_parser

    from torchrt.rendezvous.options import RendezvousOptions

    config = load_config(write(cfg_dir, MINIMAL), ["rendezvous.token=t0k=en", "rendezvous.backend=gloo",
                                                   "nodes.max=2", "nodes.nproc_per_node=3"])
    argv = torchrun_argv(config, is_host=True)
    launch_config, _, _ = config_from_args(get_args_parser().parse_args(argv[3:]))
    assert (launch_config.min_nodes, launch_config.max_nodes, launch_config.nproc_per_node) == (1, 2, 3)
    params = RendezvousParameters(backend=launch_config.rdzv_backend, endpoint=launch_config.rdzv_endpoint,
                                  run_id=launch_config.run_id, min_nodes=1, max_nodes=2,
                                  **launch_config.rdzv_configs)  # exactly how torchrun builds them
    options = RendezvousOptions.from_params(params)
    assert (options.token, options.pg_backend, options.is_host) == ("t0k=en", "gloo", True)
    assert options.run_dir == config.job.run_dir and options.heartbeat_timeout == 2.5


# ------------------------------------------------------------------ data section
def test_data_section_declares_datasets(cfg_dir: Path) -> None:
    config = load_config(write(cfg_dir, MINIMAL + "data:\n  digits: {kind: digits, batch_size: 16}\n"
                                        "  synth: {kind: synthetic, options: {size: 100}}\n"))
    specs = {spec.name: spec for spec in config.data.datasets}
    assert specs["digits"].kind == "digits" and specs["digits"].batch_size == 16
    assert specs["synth"].options["size"] == 100
    assert load_config(write(cfg_dir, MINIMAL, "empty.yaml")).data.datasets == ()


def test_bad_dataset_entry_names_file_dataset_and_problem(cfg_dir: Path) -> None:
    path = write(cfg_dir, MINIMAL + "data:\n  digits: {kind: digitz}\n")
    assert error_of(path) == f'{path}: data.digits.kind: expected one of map, shards, digits, synthetic, got "digitz"'
    message = error_of(path, ["data.digits={kind: digits, batch_size: 0}"])
    assert message.endswith(": data.digits.batch_size (from --set): expected an integer >= 1, got 0")


def test_workers_read_the_config_they_were_started_with(cfg_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchrt.config import config_environment, config_from_environment
    from torchrt.data.registry import DatasetRegistry

    path = write(cfg_dir, MINIMAL + "data:\n  digits: {kind: digits, batch_size: 16}\n")
    for key, value in config_environment(path, ["data.digits={kind: digits, batch_size: 8}"]).items():
        monkeypatch.setenv(key, value)
    assert config_from_environment().data.datasets[0].batch_size == 8
    assert DatasetRegistry().get("digits").batch_size == 8



# ------------------------------------------------------------------ checkpoint section
def test_checkpoint_section(cfg_dir: Path) -> None:
    assert load_config(write(cfg_dir, MINIMAL)).checkpoint.spec is None
    config = load_config(write(cfg_dir, MINIMAL + "checkpoint: {dir: /tmp/ck, every_steps: 50, keep: 2}\n", "c.yaml"))
    spec = config.checkpoint.spec
    assert (spec.dir, spec.every_steps, spec.keep, spec.async_save) == ("/tmp/ck", 50, 2, True)


@pytest.mark.parametrize("body,key,needle", [
    ("{dir: /tmp/ck, keep: 0}", "checkpoint.keep", "expected an integer >= 1"),
    ("{dir: /tmp/ck, when_busy: later}", "checkpoint.when_busy", "queue or skip"),
    ("{every_steps: 5}", "checkpoint.dir", "required key is missing"),
    ("{dir: /tmp/ck, evry_steps: 5}", "checkpoint.evry_steps", "accepted keys: dir, every_steps"),
])
def test_bad_checkpoint_section(cfg_dir: Path, body: str, key: str, needle: str) -> None:
    path = write(cfg_dir, MINIMAL + f"checkpoint: {body}\n")
    message = error_of(path)
    assert message.startswith(f"{path}: {key}:") and needle in message, message


# ------------------------------------------------------------------ one validation path (issue 8)
@pytest.mark.parametrize("override, key, expected", [
    ("rendezvous.join_timeout=.inf", "rendezvous.join_timeout", "expected a finite number > 0, got inf"),
    ("rendezvous.join_timeout=.nan", "rendezvous.join_timeout", "expected a finite number > 0, got nan"),
    ("rendezvous.join_timeout=-5", "rendezvous.join_timeout", "expected a number > 0, got -5"),
    ("rendezvous.heartbeat_interval=.inf", "rendezvous.heartbeat_interval", "expected a finite number > 0"),
    ("rendezvous.heartbeat_timeout=.inf", "rendezvous.heartbeat_timeout", "expected a finite number > "),
    ("rendezvous.last_call_timeout=.nan", "rendezvous.last_call_timeout", "expected a finite number >= 0"),
    ("rendezvous.rejoin_timeout=-.inf", "rendezvous.rejoin_timeout", "expected a finite number >= 0, got -inf"),
    ("nodes.monitor_interval=.inf", "nodes.monitor_interval", "expected a finite number > 0"),
    ("checkpoint.every_seconds=.inf", "checkpoint.every_seconds", "expected a finite number > 0"),
    ("data.d={kind: digits, report_interval: .nan}", "data.d.report_interval", "expected a finite number >= 0"),
])
def test_non_finite_and_non_positive_timeouts_are_refused(cfg_dir: Path, override: str, key: str,
                                                           expected: str) -> None:
    message = error_of(write(cfg_dir, MINIMAL + "checkpoint: {dir: /tmp/ck}\n"), [override])
    assert f": {key} (from --set): {expected}" in message, message


def test_the_same_bad_value_reads_the_same_from_yaml_set_and_rdzv_conf(cfg_dir: Path) -> None:
    """One check per setting: the file, an override and torchrun's --rdzv-conf expect the same."""
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from torchrt.errors import FieldError, RendezvousConfigError
    from torchrt.rendezvous.options import RendezvousOptions

    with pytest.raises(ConfigError) as from_file:
        load_config(write(cfg_dir, MINIMAL + "rendezvous: {join_timeout: .inf}\n"))
    with pytest.raises(ConfigError) as from_set:
        load_config(write(cfg_dir, MINIMAL, "b.yaml"), ["rendezvous.join_timeout=.inf"])
    with pytest.raises(RendezvousConfigError) as from_conf:
        RendezvousOptions.from_params(RendezvousParameters("torchrt", "127.0.0.1:1", "r", 1, 1, join_timeout="inf"))
    errors = [from_file.value, from_set.value, from_conf.value]
    assert all(isinstance(e, FieldError) for e in errors)
    assert {e.expected for e in errors} == {"a finite number > 0"}
    assert [e.key for e in errors] == ["rendezvous.join_timeout", "rendezvous.join_timeout (from --set)",
                                       "join_timeout"]


def test_spec_errors_reach_the_config_as_fields_not_text(cfg_dir: Path) -> None:
    """A checkpoint or data spec's error is re-raised from its key/expected/got, not its message."""
    with pytest.raises(ConfigError) as info:
        load_config(write(cfg_dir, MINIMAL + "checkpoint: {dir: /tmp/ck, keep: 0}\n"))
    assert (info.value.key, info.value.expected, info.value.got) == ("checkpoint.keep", "an integer >= 1", 0)
    with pytest.raises(ConfigError) as info:
        load_config(write(cfg_dir, MINIMAL + "data:\n  d: {kind: digits, workers: -1}\n", "d.yaml"))
    assert (info.value.key, info.value.expected, info.value.got) == ("data.d.workers", "an integer >= 0", -1)


def test_a_default_ruled_out_by_another_key_is_reported(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL), ["rendezvous.heartbeat_interval=3"])
    assert message.endswith(": rendezvous.heartbeat_timeout: expected a number > rendezvous.heartbeat_interval "
                            "(3), got 2.5 (the default)")


def test_ipv6_endpoints(cfg_dir: Path) -> None:
    path = write(cfg_dir, MINIMAL)
    assert load_config(path, ['rendezvous.endpoint="[::1]:29400"']).rendezvous.endpoint == "[::1]:29400"
    message = error_of(path, ["rendezvous.endpoint=::1:29400"])
    assert message.endswith(': rendezvous.endpoint (from --set): expected HOST:PORT, got "::1:29400" '
                            "(an IPv6 address needs brackets, e.g. [::1]:29400)")


def test_token_file(cfg_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHRT_TOKEN", raising=False)
    monkeypatch.delenv("TORCHRT_TOKEN_FILE", raising=False)
    (cfg_dir / "secret").write_text("s3cr3t\n")
    config = load_config(write(cfg_dir, MINIMAL + "rendezvous: {token_file: secret}\n"))
    assert config.rendezvous.token is None  # the secret stays out of the config (and so of argv)
    assert config.rendezvous.token_file == str((cfg_dir / "secret").resolve())
    assert config.rendezvous.resolved_token() == "s3cr3t"
    both = error_of(write(cfg_dir, MINIMAL, "b.yaml"), ["rendezvous.token=x", "rendezvous.token_file=secret"])
    assert both.endswith(": rendezvous.token_file (from --set): give token or token_file, not both")
    missing = error_of(write(cfg_dir, MINIMAL, "c.yaml"), ["rendezvous.token_file=nope"])
    assert ": rendezvous.token_file (from --set): expected an existing file (looked for " in missing
    (cfg_dir / "empty").write_text("")
    empty = error_of(write(cfg_dir, MINIMAL, "d.yaml"), ["rendezvous.token_file=empty"])
    assert ": rendezvous.token_file (from --set): token file " in empty and "holds no token" in empty


def test_torchrt_run_exits_2_naming_an_infinite_timeout(cfg_dir: Path) -> None:
    """The real CLI: a bad timeout is one line on stderr and status 2, before anything starts."""
    path = write(cfg_dir, f"job: {{name: demo, run_dir: {cfg_dir / 'run'}}}\nentrypoint: {{script: train.py}}\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "run", str(path), "--set",
                           "rendezvous.join_timeout=.inf"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"torchrt: {path}: rendezvous.join_timeout (from --set): expected a finite number > 0, "
                           "got inf\n")
    assert not (cfg_dir / "run").exists()


def test_a_run_id_that_would_leave_the_runs_directory_is_a_config_error(cfg_dir: Path) -> None:
    message = error_of(write(cfg_dir, MINIMAL), ["job.run_id=../../x"])
    assert ": job.run_id (from --set): expected a non-empty name without '/'" in message
