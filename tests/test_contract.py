"""The contract (torchrt/contract.py) is the only place names that cross a process boundary live.

These tests read the source of torchrt/ and launch/ and fail when a new string literal for an
event type, an op or a ``TORCHRT_*`` variable appears outside the contract, and when
docs/events.md no longer matches the contract it is generated from.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from torchrt import contract, errors
from torchrt.contract import EVENTS, ROLE_OPS, Code, EventType, Op, Origin, Role

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("torchrt", "launch", "monitor") for p in (REPO / d).rglob("*.py")
                 if p.name != "contract.py")
EVENT_NAMES = {e.value for e in EventType}
OP_NAMES = {o.value for o in Op}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield name, first.value, node.lineno


def test_docs_events_md_is_generated_from_the_contract():
    on_disk = (REPO / "docs" / "events.md").read_text(encoding="utf-8")
    assert on_disk == contract.events_markdown(), \
        "docs/events.md is stale: run `python -m torchrt.contract > docs/events.md`"


def test_every_event_type_has_a_spec_with_fields():
    assert set(EVENTS) == set(EventType)
    for spec in EVENTS.values():
        assert spec.doc and isinstance(spec.fields, dict), spec.type
        assert spec.origin in (Origin.COORDINATOR, Origin.WORKER, Origin.NODE)
    assert EventType.NODE_DEAD not in contract.WORKER_REPORTS
    assert contract.NODE_REPORTS == {EventType.NODE_STATS, EventType.NODE_STATUS}
    assert not contract.NODE_REPORTS & contract.WORKER_REPORTS
    assert EventType.RANK_STALLED not in contract.WORKER_REPORTS | contract.NODE_REPORTS
    assert EventType.SHUTDOWN not in contract.WORKER_REPORTS
    assert EVENTS[EventType.CHECKPOINT_COMMITTED].rank0_only


def test_roles_may_do_only_what_is_listed():
    assert set(ROLE_OPS) == set(Role)
    assert Op.TELEMETRY not in ROLE_OPS[Role.OBSERVER]
    assert not ({Op.JOIN, Op.LEAVE, Op.CLOSE} & (ROLE_OPS[Role.OBSERVER] | ROLE_OPS[Role.WORKER]))


@pytest.mark.parametrize("code", list(Code))
def test_every_error_code_maps_to_its_own_typed_error(code):
    error = errors.error_from_reply(code.value, "boom")
    assert type(error) is not errors.RendezvousError, f"code {code} has no typed error"
    assert str(error) == "boom"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_literal_event_op_or_environment_name_outside_the_contract(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for name, value, line in _calls(tree):
        if name in ("emit", "_emit") and value in EVENT_NAMES:
            found.append(f"line {line}: event {value!r}")
        if name in ("request", "send") and value in OP_NAMES:
            found.append(f"line {line}: op {value!r}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("TORCHRT_") and node.value != contract.Env.PREFIX:
            found.append(f"line {node.lineno}: environment variable {node.value!r}")
    assert not found, f"{path.relative_to(REPO)}: use torchrt.contract names instead of: " + "; ".join(found)
