"""docs/ stays true: the configuration reference is current, every event and metric the
code emits is explained in operations.md, every variable the code reads is documented."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mx8_agent.metrics import COUNTERS, GAUGES
from mx8_coordinator.web.metrics import CoordinatorMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGES = [ROOT / name for name in ("mx8", "mx8_common", "mx8_coordinator", "mx8_agent")]


def _gen_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts/gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source_text() -> dict[Path, str]:
    return {
        p: p.read_text()
        for pkg in PACKAGES
        for p in pkg.rglob("*.py")
        if "/proto/" not in p.as_posix()
    }


def emitted_events() -> set[str]:
    """Event names passed to ``emit(component, "name", ...)`` or a logger call."""
    events: set[str] = set()
    for text in _source_text().values():
        events |= set(re.findall(r'emit\(\s*[^,()]+,\s*"([a-z_]+)"', text))
        events |= set(re.findall(r'\.(?:warning|error)\(\s*"([a-z_]+)"', text))
    return events


def test_docs_configuration_reference_is_current() -> None:
    current = (DOCS / "configuration.md").read_text()
    assert current == _gen_module().render(), (
        "docs/configuration.md is stale; run: python scripts/gen_config_docs.py"
    )


def test_docs_gen_script_check_mode() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/gen_config_docs.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_docs_configuration_names_every_variable_the_code_reads() -> None:
    reference = (DOCS / "configuration.md").read_text()
    names = set()
    for text in _source_text().values():
        names |= set(re.findall(r"\bMX8_[A-Z0-9_]*[A-Z0-9]\b", text))
    names = {n for n in names if not n.startswith("MX8_TEST_")}
    missing = sorted(n for n in names if f"`{n}`" not in reference)
    assert not missing, f"configuration.md does not document {missing}"
    for flag in ("--tls-cert", "--tls-key", "--tls-ca", "--auth-token", "--metrics"):
        assert f"`{flag}`" in reference


def test_docs_operations_explains_every_event() -> None:
    operations = (DOCS / "operations.md").read_text()
    events = emitted_events()
    assert {"lease_started", "coordinator_serving", "grpc_exposed_without_auth"} <= events
    missing = sorted(e for e in events if f"`{e}`" not in operations)
    assert not missing, f"operations.md does not explain events {missing}"


def test_docs_operations_lists_every_metric() -> None:
    operations = (DOCS / "operations.md").read_text()
    names = {m.name for m in CoordinatorMetrics().registry.collect()}
    # prometheus_client drops the _total suffix from a counter's family name.
    counters = {m.name for m in CoordinatorMetrics().registry.collect() if m.type == "counter"}
    exposed = {f"{n}_total" if n in counters else n for n in names}
    exposed |= {f"mx8_agent_{n}_total" for n in COUNTERS}
    exposed |= {f"mx8_agent_{n}" for n in GAUGES} | {"mx8_agent_fetch_latency_seconds"}
    missing = sorted(n for n in exposed if n not in operations)
    assert not missing, f"operations.md does not list metrics {missing}"


@pytest.mark.parametrize("page", ["architecture.md", "operations.md", "configuration.md"])
def test_docs_links_between_pages_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#]+\.md)\)", text):
        assert (DOCS / target).exists(), f"{page} links to missing {target}"


def test_docs_architecture_has_one_data_flow_diagram() -> None:
    text = (DOCS / "architecture.md").read_text()
    assert text.count("```mermaid") == 1
    for part in ("mx8-coordinator", "mx8d-agent", "GetManifestStream", "RequestLease"):
        assert part in text


def test_readme_and_docs_link_only_inside_the_repository() -> None:
    for doc in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = doc.read_text()
        targets = re.findall(r"\]\(([^)#\s]+)", text) + re.findall(r"`(\.\./[^`\s]+)`", text)
        for target in targets:
            assert not re.match(r"[a-z]+://", target), f"{doc.name}: {target} leaves the repo"
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repo"
            assert path.exists(), f"{doc.name}: {target} does not exist"
