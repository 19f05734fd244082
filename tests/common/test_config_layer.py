"""Configuration stays in the config layer: one module reads the environment, every variable
has one declaration (one default), the agent and embedded ``mx8.load`` read the data plane's
settings through the same classes, and a bad value is one line naming its variable."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.api import make_local_dataset

import mx8
from mx8_agent.config import load_agent_config
from mx8_common.config_fields import env_names, load_env, setting, shared
from mx8_common.errors import ConfigError
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.object_reader import ObjectReaderConfig

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mx8", "mx8_common", "mx8_coordinator", "mx8_agent")
#: The one module that reads ``os.environ`` for configuration.
CONFIG_READER = Path("mx8_common/config_fields.py")
#: The local S3 server launcher of tests, benchmarks and the demo: it hands its callers'
#: environment (and test credentials) to the server it starts.
HARNESS = Path("mx8_common/testing")
#: A trainer's unset MX8_JOB_ID means "the job my agent serves", not the daemons' "default".
ROLE_DEFAULTS = {"MX8_JOB_ID"}


def _gen_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts/gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env_reads(tree: ast.AST) -> list[int]:
    """Lines that read ``os.environ``/``os.getenv``; handing the whole environment to a child
    (``{**os.environ, ...}``) and writing it (``os.environ.update``) are not reads."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        is_env = (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("environ", "getenv", "environb", "getenvb")
        ) or (isinstance(node, ast.ImportFrom) and node.module == "os"
              and any(a.name in ("environ", "getenv") for a in node.names))  # fmt: skip
        if not is_env:
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Dict) and any(
            k is None and v is node for k, v in zip(parent.keys, parent.values, strict=True)
        ):
            continue
        if isinstance(parent, ast.Attribute) and parent.attr == "update":
            continue
        lines.append(node.lineno)
    return lines


def test_config_layer_only_config_fields_reads_the_environment() -> None:
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel == CONFIG_READER or HARNESS in rel.parents or "proto" in rel.parts:
                continue
            problems += [f"{rel}:{line}" for line in _env_reads(ast.parse(path.read_text()))]
    assert not problems, f"environment read outside the config layer: {problems}"


@pytest.mark.parametrize(
    ("source", "reads"),
    [
        ("import os\nx = os.environ.get('A')\n", [2]),
        ("import os\nx = os.getenv('A')\n", [2]),
        ("import os\nx = 'A' in os.environ\n", [2]),
        ("from os import environ\n", [1]),
        ("import os\nenv = {**os.environ, 'A': '1'}\n", []),
        ("import os\nos.environ.update({'A': '1'})\n", []),
    ],
)
def test_config_layer_env_read_scan_tells_reads_from_hand_offs(
    source: str, reads: list[int]
) -> None:
    assert _env_reads(ast.parse(source)) == reads


def test_config_layer_every_variable_has_one_default() -> None:
    gen = _gen_module()
    defaults: dict[str, set[str]] = {}
    for cls in (*gen.CONFIG_CLASSES, *gen._EMBEDDED_FETCH):
        for field in dataclasses.fields(cls):
            if "env" in field.metadata:
                for name in env_names(field):
                    defaults.setdefault(name, set()).add(repr(field.default))
    assert defaults["MX8_FETCH_CONCURRENCY"] == {"64"}
    twice = {n: d for n, d in defaults.items() if len(d) > 1 and n not in ROLE_DEFAULTS}
    assert not twice, f"variables with two defaults: {twice}"


def test_config_layer_shared_setting_reuses_the_declaration() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Base:
        size: int = setting(7, env="MX8_T_SIZE", help="a size", flag="--t-size")

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Daemon:
        base_size: int = shared(Base, "size", help="the daemon's size")

    field = Daemon.__dataclass_fields__["base_size"]
    assert field.default == 7 and field.metadata["env"] == "MX8_T_SIZE"
    assert field.metadata["flag"] == "--t-size" and field.metadata["help"] == "the daemon's size"
    assert load_env(Daemon, {"MX8_T_SIZE": "9"}).base_size == 9


def test_config_layer_fallback_variables_are_read_in_order() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Endpoint:
        url: str | None = setting(None, env="MX8_T_URL", also_env=("T_A", "T_B"), help="url")

    assert load_env(Endpoint, {"T_B": "b", "T_A": "a"}).url == "a"
    assert load_env(Endpoint, {"T_B": "b", "T_A": ""}).url == "b"
    assert load_env(Endpoint, {"MX8_T_URL": "m", "T_A": "a"}).url == "m"
    assert load_env(Endpoint, {}).url is None


_AGENT_FLAGS = [
    "--fetch-concurrency", "7", "--max-inflight-bytes", "64MiB",
    "--fetch-unknown-size-estimate", "2MiB", "--fetch-reorder-window", "99",
    "--fetch-local-group", "4", "--fetch-max-attempts", "3", "--fetch-backoff-base-s", "0.1",
    "--fetch-backoff-max-s", "1", "--fetch-local-threads", "2", "--no-fetch-lean-s3-get",
]  # fmt: skip
_SAME_AS_ENV = {
    "MX8_FETCH_CONCURRENCY": "7",
    "MX8_MAX_INFLIGHT_BYTES": "64MiB",
    "MX8_FETCH_UNKNOWN_SIZE_ESTIMATE": "2MiB",
    "MX8_FETCH_REORDER_WINDOW": "99",
    "MX8_FETCH_LOCAL_GROUP": "4",
    "MX8_FETCH_MAX_ATTEMPTS": "3",
    "MX8_FETCH_BACKOFF_BASE_S": "0.1",
    "MX8_FETCH_BACKOFF_MAX_S": "1",
    "MX8_FETCH_LOCAL_THREADS": "2",
    "MX8_FETCH_LEAN_S3_GET": "0",
}


def test_config_layer_agent_fetch_flags_reach_the_data_plane_configs() -> None:
    cfg = load_agent_config(_AGENT_FLAGS, environ={})
    assert cfg.fetch_config() == FetchConfig(
        concurrency=7,
        max_inflight_bytes=64 << 20,
        unknown_size_estimate=2 << 20,
        reorder_window=99,
        local_group=4,
    )
    assert cfg.reader_config() == ObjectReaderConfig(
        max_attempts=3,
        backoff_base_s=0.1,
        backoff_max_s=1.0,
        local_read_threads=2,
        lean_s3_get=False,
    )


def test_config_layer_agent_and_embedded_read_the_same_variables_alike() -> None:
    agent = load_agent_config([], environ=_SAME_AS_ENV)
    assert agent.fetch_config() == FetchConfig.from_env(_SAME_AS_ENV)
    assert agent.reader_config() == ObjectReaderConfig.from_env(_SAME_AS_ENV)
    assert agent.fetch_config() == load_agent_config(_AGENT_FLAGS, environ={}).fetch_config()


@pytest.mark.parametrize("gone", ["--local-group", "--concurrency", "--max-attempts"])
def test_config_layer_agent_rejects_the_flags_the_old_docs_named(gone: str) -> None:
    with pytest.raises(SystemExit):
        load_agent_config([gone, "8"], environ={})


_BAD = [
    ({"MX8_FETCH_MAX_ATTEMPTS": "0"}, "MX8_FETCH_MAX_ATTEMPTS"),
    ({"MX8_FETCH_LOCAL_THREADS": "abc"}, "MX8_FETCH_LOCAL_THREADS"),
    ({"MX8_FETCH_CONCURRENCY": "0"}, "MX8_FETCH_CONCURRENCY"),
    ({"MX8_FETCH_REORDER_WINDOW": "-1"}, "MX8_FETCH_REORDER_WINDOW"),
    ({"MX8_MAX_INFLIGHT_BYTES": "lots"}, "MX8_MAX_INFLIGHT_BYTES"),
    ({"MX8_FETCH_LEAN_S3_GET": "maybe"}, "MX8_FETCH_LEAN_S3_GET"),
]


def _one_line(exc: BaseException) -> None:
    assert "\n" not in str(exc)
    assert exc.__cause__ is None and (exc.__suppress_context__ or exc.__context__ is None)


@pytest.mark.parametrize(("env", "variable"), _BAD)
def test_config_layer_agent_names_the_bad_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable) as caught:
        load_agent_config([], environ=env)
    _one_line(caught.value)


@pytest.mark.parametrize(("env", "variable"), _BAD)
def test_config_layer_embedded_load_names_the_bad_variable(
    env: dict[str, str], variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=variable) as caught:
        mx8.load(str(tmp_path), batch_size=2)
    _one_line(caught.value)


def test_config_layer_embedded_load_honours_the_fetch_variables(
    tmp_path: Path, store_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_local_dataset(tmp_path / "data", per_class=3)
    for name, value in _SAME_AS_ENV.items():
        monkeypatch.setenv(name, value)
    loader: Any = mx8.load(str(tmp_path / "data"), batch_size=4)
    assert loader._fetch == FetchConfig.from_env(_SAME_AS_ENV)
    assert loader._reader == ObjectReaderConfig.from_env(_SAME_AS_ENV)
    assert sum(len(b) for b in loader) == 9
    # Arguments win over the environment.
    explicit: Any = mx8.load(
        str(tmp_path / "data"), batch_size=4, fetch_concurrency=5, max_inflight_bytes=1 << 20
    )
    assert (explicit._fetch.concurrency, explicit._fetch.max_inflight_bytes) == (5, 1 << 20)
    assert explicit._fetch.local_group == 4


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--max-inflight-bytes", "lots"], "--max-inflight-bytes"),
        (["--fetch-local-threads", "abc"], "--fetch-local-threads"),
    ],
)
def test_config_layer_bad_flag_value_names_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        load_agent_config(argv, environ={})
    assert caught.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err
