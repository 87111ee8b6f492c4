"""docs/config.md is generated from the config's own definitions (torchrt/config_docs.py) and
must match them; every key of every section carries the doc and check the reference shows."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from torchrt.config import JobConfig, load_config
from torchrt.config_docs import config_markdown, nested_dataclass

REPO = Path(__file__).resolve().parent.parent
NOT_KEYS = {"dataset"}  # DataSpec.dataset: an object given in code, never in a config file


def test_docs_config_md_is_generated_from_the_config():
    on_disk = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert on_disk == config_markdown(), \
        "docs/config.md is stale: run `python -m torchrt.config_docs > docs/config.md`"


def _key_classes() -> list[type]:
    """The dataclasses whose fields are config keys: the sections (or the specs they hand their keys
    to) and the mappings nested in them (demo.faults, demo.faults.kill_worker, ...)."""
    found, todo = [], [getattr(cls, "keys_from", cls) for cls in JobConfig.sections().values()]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += [n for n in map(nested_dataclass, typing.get_type_hints(cls).values()) if n]
    return found


@pytest.mark.parametrize("cls", _key_classes(), ids=lambda c: c.__name__)
def test_every_key_is_declared_with_a_check_and_a_doc(cls):
    undocumented = [f.name for f in dataclasses.fields(cls) if f.name not in NOT_KEYS
                    and ("check" not in f.metadata or not f.metadata.get("doc"))]
    assert not undocumented, f"{cls.__name__}: declare these with torchrt.validation.setting(..., doc=...): " \
                             f"{undocumented}"


def test_every_shipped_config_loads():
    """configs/*.yaml are the commented examples docs/config.md points to: each must be valid."""
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert {"demo.yaml", "single-node.yaml", "multi-node.yaml"} <= {c.name for c in configs}
    for path in configs:
        load_config(path)
