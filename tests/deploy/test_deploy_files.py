"""deploy/ files are usable as they are: every command, flag and MX8_* name exists in the code.

Each daemon command in compose, Kubernetes and systemd files is parsed by the daemon's real
config loader with the environment the file gives it, so a renamed or removed flag or env
var, or a value the daemon would reject, fails here instead of in production.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mx8.cli import build_parser
from mx8_agent.config import AgentConfig, load_agent_config
from mx8_common.snapshot.resolver import SnapshotResolverConfig
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.object_reader import ObjectReaderConfig
from mx8_coordinator.config import CoordinatorConfig, load_coordinator_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_CLASSES = (
    CoordinatorConfig,
    AgentConfig,
    SnapshotResolverConfig,
    FetchConfig,
    ObjectReaderConfig,
)
_MX8_NAME = re.compile(r"\bMX8_[A-Z0-9_]*[A-Z0-9]\b")


PACKAGES = ("mx8", "mx8_common", "mx8_coordinator", "mx8_agent")


def known_env_names() -> set[str]:
    """Every MX8_* variable the code reads: config settings plus names read directly."""
    names = {
        f.metadata["env"]
        for cls in CONFIG_CLASSES
        for f in dataclasses.fields(cls)
        if "env" in f.metadata
    }
    for path in (p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")):
        names |= set(_MX8_NAME.findall(path.read_text()))
    return names


def console_scripts() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["scripts"])


def _check_mx8(args: list[str], env: dict[str, str]) -> Any:
    return build_parser().parse_args(args)


PROGRAMS: dict[str, Callable[[list[str], dict[str, str]], Any]] = {
    "mx8-coordinator": lambda args, env: load_coordinator_config(args, environ=env),
    "mx8d-agent": lambda args, env: load_agent_config(args, environ=env),
    "mx8": _check_mx8,
}


def check_command(argv: list[str], env: dict[str, str], where: str) -> Any:
    """Parse ``argv`` with the real loader of its program; returns the config."""
    program = Path(argv[0]).name
    assert program in console_scripts(), f"{where}: {program} is not an installed command"
    try:
        return PROGRAMS[program](argv[1:], {k: v for k, v in env.items() if k.startswith("MX8_")})
    except SystemExit as exc:  # argparse: unknown flag or bad value
        raise AssertionError(f"{where}: {program} rejects {argv[1:]}") from exc


def _compose_value(value: Any) -> str:
    """Resolve ``${VAR:-default}`` / ``${VAR:?message}`` as compose would with VAR unset."""

    def sub(m: re.Match[str]) -> str:
        op, rest = m.group(2), m.group(3)
        if op == ":-":
            return rest
        return "token-from-the-operator" if op == ":?" else ""

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", sub, str(value))


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


# -- every file --------------------------------------------------------------------------


def test_deploy_files_exist() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in _deploy_files()}
    assert {
        "Dockerfile",
        "compose.yaml",
        "k8s/configmap.yaml",
        "k8s/coordinator.yaml",
        "k8s/agent-daemonset.yaml",
        "systemd/mx8-coordinator.service",
        "systemd/mx8d-agent.service",
    } <= names


@pytest.mark.parametrize("path", _deploy_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_deploy_files_name_only_env_vars_the_code_reads(path: Path) -> None:
    unknown = set(_MX8_NAME.findall(path.read_text())) - known_env_names()
    assert not unknown, f"{path.name} names MX8_* variables no code reads: {sorted(unknown)}"


def test_deploy_files_known_env_names_catch_a_rename() -> None:
    known = known_env_names()
    assert {"MX8_DATASET_LINK", "MX8_AUTH_TOKEN", "MX8_TLS_CA", "MX8_COORDINATOR_URL"} <= known
    assert "MX8_DATASET_URL" not in known


# -- compose -----------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_deploy_compose_commands_parse_with_their_environment() -> None:
    services = _compose()["services"]
    seen: dict[str, int] = {}
    for name, svc in services.items():
        command = svc.get("command")
        # A shell one-liner (minio-init) is not an mx8 command.
        if not command or " " in command[0] or Path(command[0]).name not in PROGRAMS:
            continue
        env = {k: _compose_value(v) for k, v in (svc.get("environment") or {}).items()}
        config = check_command([str(c) for c in command], env, f"compose {name}")
        seen[command[0]] = seen.get(command[0], 0) + 1
        if command[0] == "mx8-coordinator":
            # Reachable from the agents' containers, so it must carry a token.
            assert config.auth_token and config.listen.startswith("0.0.0.0:")
            assert svc["healthcheck"]["test"][-1] == config.listen.replace("0.0.0.0", "127.0.0.1")
        if command[0] == "mx8d-agent":
            coordinator_env = services["coordinator"]["environment"]
            assert env["MX8_AUTH_TOKEN"] == _compose_value(coordinator_env["MX8_AUTH_TOKEN"])
            assert config.job_id == _compose_value(coordinator_env["MX8_JOB_ID"])
            socket_dir = str(Path(config.listen.removeprefix("unix://")).parent)
            assert any(v.endswith(f":{socket_dir}") for v in svc["volumes"]), name
            port = config.metrics.rpartition(":")[2]
            assert f"127.0.0.1:{port}/" in svc["healthcheck"]["test"][-1]
    assert seen == {"mx8-coordinator": 1, "mx8d-agent": 2}


def test_deploy_compose_healthchecks_parse() -> None:
    for name, svc in _compose()["services"].items():
        test = (svc.get("healthcheck") or {}).get("test") or []
        if len(test) > 1 and test[0] == "CMD" and test[1] in PROGRAMS:
            check_command(test[1:], {}, f"compose {name} healthcheck")


def test_deploy_compose_agents_wait_for_a_healthy_coordinator() -> None:
    services = _compose()["services"]
    for name in ("agent-0", "agent-1"):
        assert services[name]["depends_on"]["coordinator"]["condition"] == "service_healthy"
    node_ids = {
        s["command"][s["command"].index("--node-id") + 1]
        for s in services.values()
        if s.get("command") and s["command"][0] == "mx8d-agent"
    }
    assert node_ids == {"agent-0", "agent-1"}


# -- Kubernetes --------------------------------------------------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    return [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in _yaml_docs(p)]


def _configmap() -> dict[str, str]:
    maps = [d for d in _k8s_docs() if d["kind"] == "ConfigMap"]
    assert len(maps) == 1
    return {k: str(v) for k, v in maps[0]["data"].items()}


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for doc in _k8s_docs():
        if doc["kind"] in ("Deployment", "DaemonSet"):
            pod = doc["spec"]["template"]["spec"]
            for c in pod["containers"]:
                yield doc["kind"], c, pod


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "mx8-config"
        env.update(_configmap())
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "from-" + next(iter(item["valueFrom"]))))
    return env


def test_deploy_k8s_containers_parse_with_their_environment() -> None:
    kinds = {}
    for kind, c, pod in _containers():
        argv = [*c["command"], *c.get("args", [])]
        config = check_command(argv, _container_env(c), f"k8s {kind} {c['name']}")
        kinds[kind] = config
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if kind == "Deployment":
            grpc_port = int(config.listen.rpartition(":")[2])
            assert ports["grpc"] == grpc_port
            # Ready (in the Service) only while it leads; alive while it waits as a standby.
            assert c["readinessProbe"]["grpc"]["port"] == grpc_port
            for probe in ("startupProbe", "livenessProbe"):
                assert c[probe]["tcpSocket"]["port"] == grpc_port, probe
            assert ports["metrics"] == int(config.metrics.rpartition(":")[2])
            assert config.auth_token and config.state_in_store and config.standby
            assert "volumeMounts" not in c  # the state is in the store, not on a volume
        else:
            socket_dir = str(Path(config.listen.removeprefix("unix://")).parent)
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            host_paths = {
                v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v
            }
            assert mounts["socket-dir"] == socket_dir and host_paths["socket-dir"] == socket_dir
            metrics_port = int(config.metrics.rpartition(":")[2])
            assert c["livenessProbe"]["httpGet"]["port"] == metrics_port
            assert config.coordinator == _configmap()["MX8_COORDINATOR_URL"]
    assert set(kinds) == {"Deployment", "DaemonSet"}
    assert isinstance(kinds["Deployment"], CoordinatorConfig)
    assert isinstance(kinds["DaemonSet"], AgentConfig)


def test_deploy_k8s_service_targets_the_coordinator() -> None:
    docs = _k8s_docs()
    service = next(d for d in docs if d["kind"] == "Service")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    # Agents dial the Service by its name.
    host, _, port = _configmap()["MX8_COORDINATOR_URL"].partition(":")
    assert host == service["metadata"]["name"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}


def test_deploy_k8s_configmap_values_load() -> None:
    env = _configmap()
    assert set(env) <= known_env_names()
    load_coordinator_config([], environ=env)
    load_agent_config([], environ=env)


# -- systemd -----------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit (keys may repeat), continuation lines joined."""
    keys: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not Key=value: {line!r}"
        keys.setdefault(key, []).append(value)
    return keys


def _env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.partition("=")
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {k: v for k, _, v in pairs}


@pytest.mark.parametrize(
    ("unit", "env_example", "program"),
    [
        ("mx8-coordinator.service", "coordinator.env.example", "mx8-coordinator"),
        ("mx8d-agent.service", "agent.env.example", "mx8d-agent"),
    ],
)
def test_deploy_systemd_units_parse(unit: str, env_example: str, program: str) -> None:
    keys = _unit(DEPLOY / "systemd" / unit)
    (exec_start,) = keys["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == program
    (env_file,) = keys["EnvironmentFile"]
    assert Path(env_file.lstrip("-")).name == env_example.removesuffix(".example")
    env = _env_file(DEPLOY / "systemd" / env_example)
    config = check_command(argv, env, unit)
    assert config.auth_token if program == "mx8-coordinator" else env["MX8_AUTH_TOKEN"]
    assert keys["KillSignal"] == ["SIGTERM"] and keys["Restart"] == ["on-failure"]
    assert keys["WantedBy"] == ["multi-user.target"]
    if program == "mx8d-agent":
        socket_dir = Path(config.listen.removeprefix("unix://")).parent
        assert keys["RuntimeDirectory"] == [socket_dir.relative_to("/run").as_posix()]


# -- Dockerfile --------------------------------------------------------------------------


def test_deploy_dockerfile_builds_from_repo_files_and_runs_a_command() -> None:
    lines = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text()).splitlines()
    instructions = [ln.split(None, 1) for ln in lines if ln.strip() and not ln.startswith("#")]
    ops = [op.upper() for op, _ in instructions]
    assert ops[0] == "FROM" and "CMD" in ops
    for op, rest in instructions:
        if op == "COPY":
            *sources, _ = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
        if op == "CMD":
            argv = json.loads(rest)
            check_command(argv, {"MX8_DATASET_LINK": "s3://b/p/"}, "Dockerfile CMD")
        if op == "ENV":
            name = rest.split("=", 1)[0]
            assert not name.startswith("MX8_") or name in known_env_names()
