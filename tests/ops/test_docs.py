"""docs/ stays true: the configuration reference is current, every event and metric the
code emits is explained in operations.md, every variable the code reads is documented, and
every flag and variable the docs name is accepted by a real parser or read by a config class."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
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


# -- every flag and variable the docs name exists ------------------------------------------

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:-\*)?")
_VAR = re.compile(r"\bMX8_[A-Z0-9_]*[A-Z0-9](?:_\*)?")
#: Flags of other tools the docs show in full commands: flag -> the tool's name on that line.
_FOREIGN_FLAGS = {"--build": "docker compose", "--from-literal": "kubectl"}
#: Files that read variables no config class declares: the test harness and its scripts.
_HARNESS = [ROOT / "mx8_common/testing/local_s3.py", *sorted((ROOT / "scripts").glob("*.sh"))]


def _doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _program_parsers() -> dict[str, tuple[argparse.ArgumentParser, list[str]]]:
    """Each command's real parser and the arguments it needs besides the flag under test."""
    from benchmarks.__main__ import build_parser as bench_parser
    from mx8.cli import build_parser as mx8_parser
    from mx8_common.config_fields import build_parser
    from mx8_common.snapshot.cli import build_parser as resolve_parser

    gen = _gen_module()
    programs = {
        program: (build_parser(cls, prog=program, description=""), [])
        for cls, program in gen.PROGRAMS.items()
    }
    programs["mx8-snapshot-resolve"] = (resolve_parser(), ["/data"])
    programs["mx8 status"] = (mx8_parser(), ["status"])
    programs["mx8 health"] = (mx8_parser(), ["health", "127.0.0.1:1"])
    programs["python -m benchmarks"] = (bench_parser(), [])
    return programs


def _accepts(parser: argparse.ArgumentParser, before: list[str], flag: str) -> bool:
    """True when ``parser`` knows ``flag`` exactly (no abbreviations): parsing it alone
    either succeeds or fails only for its missing value. ``--fetch-*`` names a family:
    some flag of the parser must start with ``--fetch-``."""
    parsers = [parser]
    for sub in parser._subparsers._group_actions if parser._subparsers else ():
        parsers += sub.choices.values()
    for p in parsers:
        p.allow_abbrev = False
    if flag.endswith("-*"):
        return any(o.startswith(flag[:-1]) for p in parsers for o in p._option_string_actions)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            _, unknown = parser.parse_known_args([*before, flag])
    except SystemExit:
        return True  # known, but it wants a value (the other arguments are complete)
    return flag not in unknown


def _configuration_sections() -> list[tuple[str, str]]:
    """``(class name, section text)`` of docs/configuration.md."""
    text = (DOCS / "configuration.md").read_text()
    parts = re.split(r"^## `[\w.]*?(\w+)`$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_docs_configuration_flag_column_is_what_each_program_accepts() -> None:
    gen = _gen_module()
    programs = _program_parsers()
    by_class = {cls.__name__: program for cls, program in gen.PROGRAMS.items()}
    checked = 0
    for name, section in _configuration_sections():
        rows = [r for r in section.splitlines() if r.startswith("| `")]
        flags = [_FLAG.findall(r.split("|")[2])[0] for r in rows if name in by_class]
        for flag in flags:
            parser, before = programs[by_class[name]]
            assert _accepts(parser, before, flag), f"{by_class[name]} rejects {flag}"
            checked += 1
    assert checked >= 40


def test_docs_name_only_flags_some_mx8_command_accepts() -> None:
    programs = _program_parsers()
    problems = []
    for page in _doc_pages():
        for line_no, line in enumerate(page.read_text().splitlines(), 1):
            for flag in _FLAG.findall(line):
                if flag in _FOREIGN_FLAGS:
                    if _FOREIGN_FLAGS[flag] not in line:
                        problems.append(f"{page.name}:{line_no}: {flag} outside its tool")
                    continue
                if not any(_accepts(p, before, flag) for p, before in programs.values()):
                    problems.append(f"{page.name}:{line_no}: no mx8 command accepts {flag}")
    assert not problems, "\n".join(problems)


def test_docs_name_only_variables_a_config_class_or_the_harness_reads() -> None:
    from mx8_common.config_fields import env_names

    gen = _gen_module()
    classes = (*gen.CONFIG_CLASSES, *gen._EMBEDDED_FETCH)
    declared = {n for cls in classes for f in dataclasses.fields(cls) if "env" in f.metadata
                for n in env_names(f)}  # fmt: skip
    harness = "\n".join(p.read_text() for p in _HARNESS)
    problems = []
    for page in _doc_pages():
        for name in set(_VAR.findall(page.read_text())):
            if name.endswith("_*"):  # a family: MX8_TLS_*, MX8_SMOKE_*
                prefix = name[:-1]
                ok = any(n.startswith(prefix) for n in declared) or prefix in harness
            else:
                ok = name in declared or re.search(rf"\b{name}\b", harness) is not None
            if not ok:
                problems.append(f"{page.name}: {name} is read by no config class")
    assert not problems, "\n".join(problems)


def test_docs_flag_check_catches_a_flag_no_daemon_accepts() -> None:
    programs = _program_parsers()
    agent, before = programs["mx8d-agent"]
    assert _accepts(agent, before, "--fetch-concurrency")
    assert _accepts(agent, before, "--no-fetch-lean-s3-get")
    assert _accepts(agent, before, "--fetch-*") and not _accepts(agent, before, "--fetchx-*")
    for gone in ("--local-group", "--concurrency", "--max-attempts", "--fetch-conc"):
        assert not any(_accepts(p, b, gone) for p, b in programs.values()), gone
