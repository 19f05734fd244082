"""``AgentConfig``: every knob of ``mx8d-agent``, as a flag and an ``MX8_*`` env var."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mx8_common.config_fields import load_config, parse_size, setting
from mx8_common.errors import ConfigError
from mx8_common.manifest_reader import DEFAULT_MAX_LINE_BYTES

__all__ = ["INGEST_MODES", "AgentConfig", "listen_target", "load_agent_config"]

#: How the agent may ingest the manifest.
INGEST_MODES = ("direct", "cached")


def _split_host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} {value!r} is not HOST:PORT; write e.g. 127.0.0.1:9401")
    return host.strip("[]"), int(port)


def listen_target(value: str) -> str:
    """The gRPC bind target of ``--listen``: ``unix:///abs/path`` or ``HOST:PORT``.

    Accepts ``unix:PATH``, ``unix://PATH``, ``unix:///abs/path`` and ``HOST:PORT``.
    """
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise ConfigError(
                f"--listen {value!r} names no socket path; write unix:///run/mx8/agent.sock"
            )
        return f"unix:{path}" if not path.startswith("/") else f"unix://{path}"
    _split_host_port(value, "--listen")
    return value


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Settings of the per-host agent daemon (``mx8d-agent``)."""

    coordinator: str = setting(
        "127.0.0.1:50051", env="MX8_COORDINATOR_URL", help="coordinator address HOST:PORT"
    )
    node_id: str = setting(
        "", env="MX8_NODE_ID", help="this node's stable, unique id (empty: the hostname)"
    )
    listen: str = setting(
        "unix:///run/mx8/agent.sock",
        env="MX8_AGENT_LISTEN",
        help="where local trainers connect: unix:PATH or 127.0.0.1:PORT",
    )
    job_id: str = setting("default", env="MX8_JOB_ID", help="job id the coordinator serves")
    max_inflight_bytes: int = setting(
        256 * 1024 * 1024,
        env="MX8_MAX_INFLIGHT_BYTES",
        parse=parse_size,
        help="most sample bytes held (fetching + queued + unacknowledged), e.g. 256MiB",
    )
    fetch_concurrency: int = setting(
        32, env="MX8_FETCH_CONCURRENCY", help="most sample reads running at once"
    )
    cache_dir: str = setting(
        "",
        env="MX8_AGENT_CACHE_DIR",
        help="directory of the cached-ingest manifest copy (empty: a temp dir)",
    )
    metrics: str = setting(
        "", env="MX8_AGENT_METRICS", help="Prometheus HOST:PORT, e.g. 127.0.0.1:9401 (empty: off)"
    )
    manifest_ingest: str = setting(
        "direct",
        env="MX8_AGENT_MANIFEST_INGEST",
        help="direct (stream and parse, no file) or cached (download, verify, parse the file)",
    )
    max_line_bytes: int = setting(
        DEFAULT_MAX_LINE_BYTES,
        env="MX8_AGENT_MANIFEST_STREAM_MAX_LINE_BYTES",
        parse=parse_size,
        help="longest manifest line accepted while streaming (the carry bound)",
    )
    progress_interval_ms: int = setting(
        500,
        env="MX8_PROGRESS_INTERVAL_MS",
        help="how often acknowledged progress is reported (also keeps leases alive)",
    )
    leases_ahead: int = setting(
        2, env="MX8_AGENT_LEASES_AHEAD", help="most leases held at once (fetching + delivering)"
    )
    connect_timeout_s: float = setting(
        60.0,
        env="MX8_AGENT_CONNECT_TIMEOUT_S",
        help="how long to keep retrying an unreachable coordinator before giving up",
    )
    ingest_attempts: int = setting(
        5,
        env="MX8_AGENT_INGEST_ATTEMPTS",
        help="manifest ingest tries when the cause is transient (a dropped connection)",
    )

    def __post_init__(self) -> None:
        if not self.node_id:
            # The hostname is the natural id of "the agent of this host".
            object.__setattr__(self, "node_id", socket.gethostname())
        self._validate()

    def _validate(self) -> None:
        _split_host_port(self.coordinator, "--coordinator")
        listen_target(self.listen)
        if self.metrics:
            _split_host_port(self.metrics, "--metrics")
        if not self.job_id:
            raise ConfigError("--job-id must not be empty; use the job id the coordinator serves")
        if self.manifest_ingest not in INGEST_MODES:
            raise ConfigError(
                f"--manifest-ingest {self.manifest_ingest!r} is not one of "
                f"{', '.join(INGEST_MODES)}"
            )
        positive = {
            "--max-inflight-bytes": self.max_inflight_bytes,
            "--fetch-concurrency": self.fetch_concurrency,
            "--max-line-bytes": self.max_line_bytes,
            "--progress-interval-ms": self.progress_interval_ms,
            "--leases-ahead": self.leases_ahead,
            "--connect-timeout-s": self.connect_timeout_s,
            "--ingest-attempts": self.ingest_attempts,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{flag} must be > 0, got {value}")

    @property
    def listen_target(self) -> str:
        """The gRPC bind target of ``listen``."""
        return listen_target(self.listen)

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        return _split_host_port(self.metrics, "--metrics") if self.metrics else None


def load_agent_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Defaults, then ``MX8_*`` env vars, then flags."""
    return load_config(
        AgentConfig,
        argv,
        environ=environ,
        prog="mx8d-agent",
        description="Per-host agent: ingests the manifest, leases and fetches, serves trainers.",
    )
