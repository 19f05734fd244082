"""``AgentConfig``: flags, env vars, sizes, listen forms and validation."""

from __future__ import annotations

import socket

import pytest

from mx8_agent.config import AgentConfig, listen_target, load_agent_config
from mx8_common.errors import ConfigError


def test_agent_config_defaults_follow_the_issue() -> None:
    cfg = load_agent_config([], environ={})
    assert cfg.listen == "unix:///run/mx8/agent.sock"
    assert cfg.max_inflight_bytes == 256 * 1024 * 1024
    # One MX8_FETCH_CONCURRENCY, one default: FetchConfig's, the same as embedded mx8.load.
    assert cfg.fetch_concurrency == 64
    assert cfg.manifest_ingest == "direct"
    assert cfg.max_line_bytes == 8 * 1024 * 1024
    assert cfg.leases_ahead == 2
    assert cfg.local_read_workers == 1
    assert cfg.node_id == socket.gethostname()


def test_agent_config_env_then_flags_win() -> None:
    env = {
        "MX8_COORDINATOR_URL": "10.0.0.1:50051",
        "MX8_NODE_ID": "env-node",
        "MX8_MAX_INFLIGHT_BYTES": "64MiB",
        "MX8_AGENT_MANIFEST_INGEST": "cached",
        "MX8_AGENT_MANIFEST_STREAM_MAX_LINE_BYTES": "1MiB",
        "MX8_PROGRESS_INTERVAL_MS": "250",
        "MX8_AGENT_CACHE_DIR": "/var/cache/mx8",
        "MX8_AGENT_METRICS": "127.0.0.1:9401",
    }
    cfg = load_agent_config(
        ["--node-id", "flag-node", "--fetch-concurrency", "8", "--listen", "127.0.0.1:7000"],
        environ=env,
    )
    assert cfg.coordinator == "10.0.0.1:50051"
    assert cfg.node_id == "flag-node"
    assert cfg.max_inflight_bytes == 64 * 1024 * 1024
    assert cfg.fetch_concurrency == 8
    assert cfg.manifest_ingest == "cached"
    assert cfg.max_line_bytes == 1024 * 1024
    assert cfg.progress_interval_ms == 250
    assert cfg.cache_dir == "/var/cache/mx8"
    assert cfg.metrics_host_port == ("127.0.0.1", 9401)
    assert cfg.listen_target == "127.0.0.1:7000"


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("unix:///run/mx8/agent.sock", "unix:///run/mx8/agent.sock"),
        ("unix:/run/mx8/agent.sock", "unix:///run/mx8/agent.sock"),
        ("unix:relative.sock", "unix:relative.sock"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ],
)
def test_agent_config_listen_forms(value: str, target: str) -> None:
    assert listen_target(value) == target


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"listen": "nowhere"}, "HOST:PORT"),
        ({"listen": "unix:"}, "socket path"),
        ({"coordinator": "host"}, "--coordinator"),
        ({"manifest_ingest": "lazy"}, "--manifest-ingest"),
        ({"max_inflight_bytes": 0}, "--max-inflight-bytes"),
        ({"leases_ahead": 0}, "--leases-ahead"),
        ({"local_read_workers": 0}, "--local-read-workers"),
        ({"job_id": ""}, "--job-id"),
    ],
)
def test_agent_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentConfig(**overrides)  # type: ignore[arg-type]


def test_agent_config_bad_size_names_the_env_var() -> None:
    with pytest.raises(ConfigError, match="MX8_MAX_INFLIGHT_BYTES"):
        load_agent_config([], environ={"MX8_MAX_INFLIGHT_BYTES": "lots"})
