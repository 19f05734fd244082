"""docs/api.md names every parameter of the public API, and nothing that is not one."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mx8
import mx8.vision

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"

#: Section heading of docs/api.md -> the callable whose parameters it documents.
CALLABLES: dict[str, Callable[..., Any]] = {
    "mx8.load": mx8.load,
    "mx8.DataLoader": mx8.DataLoader.__init__,
    "mx8.vision.ImageFolderLoader": mx8.vision.ImageFolderLoader.__init__,
    "mx8.resolve_manifest_hash": mx8.resolve_manifest_hash,
}


def _sections() -> dict[str, str]:
    """``## `name` `` heading -> the text up to the next ``## ``."""
    parts = re.split(r"^## ", API.read_text(), flags=re.MULTILINE)
    out = {}
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        out[heading.strip().strip("`")] = body
    return out


def _table(body: str) -> list[list[str]]:
    """The cells of the first markdown table in ``body`` (header and rule left out)."""
    rows = []
    for line in body.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _shown(value: Any) -> str:
    """A default as the docs write it (double-quoted strings, as the code is formatted)."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(fn).parameters
    return {name: p for name, p in params.items() if name != "self"}


@pytest.mark.parametrize("heading", list(CALLABLES))
def test_api_doc_table_lists_exactly_the_signature(heading: str) -> None:
    rows = _table(_sections()[heading])
    documented = [name for row in rows for name in _names(row[0])]
    params = _parameters(CALLABLES[heading])
    assert sorted(documented) == sorted(params), heading
    for row in rows:
        names = _names(row[0])
        if len(names) != 1:
            continue  # a row of "as in mx8.load" parameters
        p = params[names[0]]
        shown = (_names(row[1]) or [row[1]])[0]
        want = "(required)" if p.default is inspect.Parameter.empty else _shown(p.default)
        assert shown == want, f"{heading}: {names[0]} default"


@pytest.mark.parametrize("heading", list(CALLABLES))
def test_api_doc_signature_line_matches_the_signature(heading: str) -> None:
    body = " ".join(_sections()[heading].split("\n\n")[0].split())
    line = re.search(r"`([^`]*\))`", body)
    assert line is not None, heading
    text = line.group(1)
    for name, p in _parameters(CALLABLES[heading]).items():
        if p.default is inspect.Parameter.empty:
            assert re.search(rf"[(,]\s*{name}[,)]", text), (heading, name)
        else:
            assert f"{name}={_shown(p.default)}" in text, (heading, name)


def test_api_doc_batch_fields_are_the_constructor_fields() -> None:
    rows = _table(_sections()["mx8.Batch"])
    documented = [name for row in rows for name in _names(row[0])]
    assert documented == list(inspect.signature(mx8.Batch).parameters)


def test_api_doc_errors_are_the_exported_errors() -> None:
    rows = _table(_sections()["Errors"])
    documented = {name.removeprefix("mx8.") for row in rows for name in _names(row[0])}
    exported = {
        name
        for name in mx8.__all__
        if isinstance(getattr(mx8, name), type) and issubclass(getattr(mx8, name), mx8.Mx8Error)
    }
    assert documented == exported
    for row in rows:
        (name,) = _names(row[0])
        event = _names(row[1])
        error = getattr(mx8, name.removeprefix("mx8."))
        if event:
            assert event == [error.event], name
