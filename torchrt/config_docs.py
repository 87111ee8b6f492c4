"""docs/config.md, generated from the config's own definitions.

``python -m torchrt.config_docs > docs/config.md`` writes the reference of every section of
:class:`torchrt.config.JobConfig`, in file order: the section dataclass's docstring, then a
table of its keys, each from the field itself: its default (or the field's ``default_doc``,
for a default computed from other keys), what its :mod:`torchrt.validation` check expects
(``Check.expected``: the very words an error names) and its ``doc``. A section that hands its
keys to a spec documents the spec's fields (``keys_from``: ``data.<name>`` entries are
:class:`~torchrt.data.DataSpec`, ``checkpoint`` is :class:`~torchrt.checkpoint.CheckpointSpec`);
a key whose value is a dataclass of its own (``demo.faults.kill_worker``) gets a table of its
own. tests/test_config_docs.py fails when docs/config.md is not this module's output.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from typing import Any

from torchrt.config import JobConfig

__all__ = ["config_markdown", "nested_dataclass"]

INTRO = """\
# Job configs: the reference

Generated from `torchrt/config.py` and the specs it uses by `python -m torchrt.config_docs >
docs/config.md`; do not edit by hand (tests/test_config_docs.py checks it). Commented examples:
`configs/` (configs/README.md).

`torchrt run CONFIG.yaml [--set section.key=value ...]` starts a coordinator (when this host
owns the endpoint and none answers) and torchrun with the torchrt rendezvous backend. Loading is
strict: an unknown section or key, a wrong type (`true` is not an integer; `1` is a number), an
out-of-range value or a missing required key stops the run (exit status 2) before anything
starts, with one line naming the file, the key and what was expected:

    torchrt: job.yaml: rendezvous.join_timeout (from --set): expected a finite number > 0, got inf

The *expects* column below is what that message says. Every duration must be a finite number
(`.inf` and `.nan` are refused). `null` (or an empty value) means the default. `--set` values
are parsed as YAML, at any depth: `--set nodes.max=2`, `--set 'entrypoint.args=[a, b]'`,
`--set data.digits.batch_size=8`, `--set demo.faults.kill_worker=null`.

Workers started by `torchrt run` can read the same config
(`torchrt.config.config_from_environment()`, through `TORCHRT_CONFIG`);
`torchrt.data.pipeline_for(name)` finds `data` entries that way.
"""


def _prose(doc: str | None) -> str:
    """A docstring as Markdown: ``code`` -> `code`, :role:`~a.b.C` -> `C`."""
    text = inspect.cleandoc(doc or "")
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def _yaml(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def nested_dataclass(hint: Any) -> type | None:
    """The dataclass a field holds (``KillWorker | None`` -> KillWorker), or None."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    found = [o for o in options if dataclasses.is_dataclass(o)]
    return found[0] if found else None


def _table(cls: type, prefix: str, out: list[str], later: list[tuple[str, type]]) -> None:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if "check" not in f.metadata:  # not a config key (e.g. DataSpec.dataset, given in code only)
            continue
        nested = nested_dataclass(hints[f.name])
        if f.metadata.get("default_doc"):
            default = f.metadata["default_doc"]
        elif f.default is not dataclasses.MISSING:
            default = _yaml(f.default)
        elif f.default_factory is not dataclasses.MISSING and not nested:
            default = _yaml(f.default_factory())
        else:
            default = "required" if not nested else "off" if f.default is None else "-"
        check = f.metadata["check"]
        expects = check.expected if check is not None else ("a mapping of keys" if nested else "any")
        doc = f.metadata.get("doc") or ""
        if nested:
            later.append((f"{prefix}{f.name}", nested))
            doc = f"{doc} (`{prefix}{f.name}` below)" if doc else f"`{prefix}{f.name}` below"
        rows.append(f"| `{f.name}` | {default} | {expects} | {doc} |")
    if rows:
        out += ["| key | default | expects | meaning |", "|---|---|---|---|", *rows, ""]


def _section(title: str, cls: type, doc_cls: type, out: list[str]) -> None:
    out += [f"## `{title}`", "", _prose(doc_cls.__doc__), ""]
    later: list[tuple[str, type]] = []
    _table(cls, f"{title}.", out, later)
    for name, nested in later:
        _section(name, nested, nested, out)


def config_markdown() -> str:
    """The text of docs/config.md."""
    out = [INTRO]
    for name, cls in JobConfig.sections().items():
        keys = getattr(cls, "keys_from", cls)
        title = f"{name}.<name>" if getattr(cls, "any_keys", False) and name == "data" else name
        out += [f"## `{name}`", "", _prose(cls.__doc__), ""]
        if keys is not cls:
            out += [f"Keys of `{title}` (`{keys.__name__}`):", ""]
        later: list[tuple[str, type]] = []
        _table(keys, f"{name}.", out, later)
        for nested_name, nested in later:
            _section(nested_name, nested, nested, out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(config_markdown())
