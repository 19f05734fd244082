"""``AgentConfig``: every knob of ``mx8d-agent``, as a flag and an ``MX8_*`` env var."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mx8_common.config_fields import (
    http_host_port,
    load_config,
    parse_size,
    setting,
    shared,
    split_host_port,
)
from mx8_common.errors import ConfigError
from mx8_common.manifest.reader import DEFAULT_MAX_LINE_BYTES
from mx8_common.rpc.client_config import CoordinatorClientConfig
from mx8_common.rpc.security import TlsConfig
from mx8_common.storage.fetch_pipeline import FetchConfig
from mx8_common.storage.object_reader import ObjectReaderConfig

__all__ = [
    "AGENT_AUTH_TOKEN_ENV",
    "INGEST_MODES",
    "AgentConfig",
    "listen_target",
    "load_agent_config",
]

#: How the agent may ingest the manifest.
INGEST_MODES = ("direct", "cached")

#: The token trainers must send to the agent. Distinct from ``MX8_AUTH_TOKEN`` (and the
#: ``MX8_AGENT_TLS_*`` files from ``MX8_TLS_*``): those configure the agent's own
#: connection to the coordinator, these its trainer-facing server.
AGENT_AUTH_TOKEN_ENV = "MX8_AGENT_AUTH_TOKEN"


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
    split_host_port(value, "--listen", "127.0.0.1:9401")
    return value


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Settings of the per-host agent daemon (``mx8d-agent``)."""

    coordinator: str = shared(CoordinatorClientConfig, "address")
    node_id: str = setting(
        "", env="MX8_NODE_ID", help="this node's stable, unique id (empty: the hostname)"
    )
    listen: str = setting(
        "unix:///run/mx8/agent.sock",
        env="MX8_AGENT_LISTEN",
        help="where local trainers connect: unix:PATH or 127.0.0.1:PORT",
    )
    job_id: str = setting("default", env="MX8_JOB_ID", help="job id the coordinator serves")
    shm_dir: str = setting(
        "/dev/shm",
        env="MX8_SHM_DIR",
        flag="--shm-dir",
        help="shared-memory directory batches are handed to same-host trainers through "
        "(trainers set the same MX8_SHM_DIR); empty: always send bytes in the gRPC stream",
    )
    local_read_workers: int = setting(
        1,
        env="MX8_AGENT_LOCAL_READ_WORKERS",
        help="processes reading local-folder batches into shared memory for same-host "
        "trainers, each with its own GIL (raise it for a network file system whose reads "
        "wait on the network)",
    )
    max_inflight_bytes: int = shared(
        FetchConfig,
        "max_inflight_bytes",
        help="most sample bytes held (fetching + queued + unacknowledged), e.g. 256MiB",
    )
    # The data plane's settings are FetchConfig's and ObjectReaderConfig's (embedded
    # mx8.load reads the same variables), exposed here as --fetch-* flags.
    fetch_concurrency: int = shared(FetchConfig, "concurrency")
    fetch_unknown_size_estimate: int = shared(FetchConfig, "unknown_size_estimate")
    fetch_reorder_window: int = shared(FetchConfig, "reorder_window")
    fetch_local_group: int = shared(FetchConfig, "local_group")
    fetch_max_attempts: int = shared(ObjectReaderConfig, "max_attempts")
    fetch_backoff_base_s: float = shared(ObjectReaderConfig, "backoff_base_s")
    fetch_backoff_max_s: float = shared(ObjectReaderConfig, "backoff_max_s")
    fetch_local_threads: int = shared(ObjectReaderConfig, "local_read_threads")
    fetch_native_s3_get: bool = shared(ObjectReaderConfig, "native_s3_get")
    fetch_lean_s3_get: bool = shared(ObjectReaderConfig, "lean_s3_get")
    cache_dir: str = setting(
        "",
        env="MX8_AGENT_CACHE_DIR",
        help="directory of the cached-ingest manifest copy and of file-backed tables "
        "(empty: a temp dir)",
    )
    table_file_min_rows: int = setting(
        10_000_000,
        env="MX8_AGENT_TABLE_FILE_MIN_ROWS",
        help="manifests of at least this many rows are held in memory-mapped files under "
        "<cache-dir>/tables instead of RAM (smaller ones stay in memory)",
    )
    metrics: str = setting(
        "",
        env="MX8_AGENT_METRICS",
        help="Prometheus PORT (loopback only) or HOST:PORT, e.g. 9401 (empty: off)",
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
        help="how often every held lease is reported, moved or not (keeps leases alive); "
        "acknowledgements themselves are reported as they arrive",
    )
    progress_min_gap_ms: int = setting(
        10,
        env="MX8_PROGRESS_MIN_GAP_MS",
        help="dynamic mode: least time between two eager progress reports (acknowledgements "
        "arriving meanwhile go in one report); bounds the reports per second",
    )
    max_unreported_batches: int = setting(
        64,
        env="MX8_AGENT_MAX_UNREPORTED_BATCHES",
        help="dynamic mode: most batches handed to trainers and not yet committed by the "
        "coordinator (all leases together); further ones wait (bounds repeats after a fault)",
    )
    leases_ahead: int = setting(
        2, env="MX8_AGENT_LEASES_AHEAD", help="most leases held at once (fetching + delivering)"
    )
    no_trainer_grace_ms: int = setting(
        5000,
        env="MX8_AGENT_NO_TRAINER_GRACE_MS",
        help="dynamic mode: how long an agent whose trainers all left keeps its leases "
        "before handing them back to other hosts (it takes none until a trainer connects)",
    )
    connect_timeout_s: float = setting(
        60.0,
        env="MX8_AGENT_CONNECT_TIMEOUT_S",
        help="how long to keep retrying an unreachable coordinator before giving up",
    )
    coordinator_lost_timeout_s: float = setting(
        600.0,
        env="MX8_AGENT_COORDINATOR_LOST_TIMEOUT_S",
        help="how long a running agent waits for a coordinator it lost (unreachable, or "
        "restarted and not yet answering) before it tells its trainers and exits 2; "
        "rank-exact trainers keep being served meanwhile",
    )
    ingest_attempts: int = setting(
        5,
        env="MX8_AGENT_INGEST_ATTEMPTS",
        help="manifest ingest tries when the cause is transient (a dropped connection)",
    )
    manifest_chunk_timeout_s: float = setting(
        30.0,
        env="MX8_AGENT_MANIFEST_CHUNK_TIMEOUT_S",
        help="longest wait for the next manifest stream chunk; a stalled stream ends as "
        "manifest_stream_truncated and is retried (--ingest-attempts)",
    )
    tls_cert: str | None = setting(
        None,
        env="MX8_AGENT_TLS_CERT",
        help="PEM certificate chain of the trainer-facing server (turns TLS on)",
    )
    tls_key: str | None = setting(
        None, env="MX8_AGENT_TLS_KEY", help="PEM private key of --tls-cert"
    )
    tls_ca: str | None = setting(
        None,
        env="MX8_AGENT_TLS_CA",
        help="PEM CA bundle; when set, trainers must present a certificate it signed "
        "(mutual TLS). Trainers read MX8_AGENT_TLS_CA/_CERT/_KEY as their client side",
    )
    auth_token: str | None = setting(
        None,
        env=AGENT_AUTH_TOKEN_ENV,
        help="bearer token every trainer must send (trainers read the same variable; "
        "prefer the env var: flags show in ps)",
        secret=True,
    )

    def __post_init__(self) -> None:
        if not self.node_id:
            # The hostname is the natural id of "the agent of this host".
            object.__setattr__(self, "node_id", socket.gethostname())
        self._validate()

    def _validate(self) -> None:
        split_host_port(self.coordinator, "--coordinator")
        listen_target(self.listen)
        if self.metrics:
            http_host_port(self.metrics, "--metrics")
        if not self.job_id:
            raise ConfigError("--job-id must not be empty; use the job id the coordinator serves")
        if self.manifest_ingest not in INGEST_MODES:
            raise ConfigError(
                f"--manifest-ingest {self.manifest_ingest!r} is not one of "
                f"{', '.join(INGEST_MODES)}"
            )
        # Built once here so a bad --fetch-* value fails at start, naming its flag and variable.
        self.fetch_config()
        self.reader_config()
        positive = {
            "--max-line-bytes": self.max_line_bytes,
            "--progress-interval-ms": self.progress_interval_ms,
            "--leases-ahead": self.leases_ahead,
            "--local-read-workers": self.local_read_workers,
            "--no-trainer-grace-ms": self.no_trainer_grace_ms,
            "--max-unreported-batches": self.max_unreported_batches,
            "--connect-timeout-s": self.connect_timeout_s,
            "--coordinator-lost-timeout-s": self.coordinator_lost_timeout_s,
            "--ingest-attempts": self.ingest_attempts,
            "--manifest-chunk-timeout-s": self.manifest_chunk_timeout_s,
            "--table-file-min-rows": self.table_file_min_rows,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{flag} must be > 0, got {value}")
        if not 0 <= self.progress_min_gap_ms <= self.progress_interval_ms:
            raise ConfigError(
                f"--progress-min-gap-ms must be in [0, --progress-interval-ms "
                f"{self.progress_interval_ms}], got {self.progress_min_gap_ms}"
            )
        self._validate_security()

    def _validate_security(self) -> None:
        # Checked here, not by TlsConfig, so the messages name the agent's variables.
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (
                ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            )
            raise ConfigError(
                f"{given} needs {missing} too: a certificate and its private key go together "
                "(or set both MX8_AGENT_TLS_CERT and MX8_AGENT_TLS_KEY)"
            )
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "--tls-ca needs --tls-cert and --tls-key: mutual TLS is TLS plus client "
                "certificates (or set MX8_AGENT_TLS_CERT and MX8_AGENT_TLS_KEY)"
            )
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError(f"{AGENT_AUTH_TOKEN_ENV} is blank; set a real token or unset it")

    def fetch_config(self) -> FetchConfig:
        """The data plane's fetch settings (the whole ``--max-inflight-bytes`` budget)."""
        return FetchConfig(
            concurrency=self.fetch_concurrency,
            max_inflight_bytes=self.max_inflight_bytes,
            unknown_size_estimate=self.fetch_unknown_size_estimate,
            reorder_window=self.fetch_reorder_window,
            local_group=self.fetch_local_group,
        )

    def reader_config(self) -> ObjectReaderConfig:
        """How the agent reads sample bytes: retries and local read threads."""
        return ObjectReaderConfig(
            max_attempts=self.fetch_max_attempts,
            backoff_base_s=self.fetch_backoff_base_s,
            backoff_max_s=self.fetch_backoff_max_s,
            local_read_threads=self.fetch_local_threads,
            native_s3_get=self.fetch_native_s3_get,
            lean_s3_get=self.fetch_lean_s3_get,
        )

    @property
    def tls(self) -> TlsConfig:
        """The trainer-facing server's TLS files (all None: plaintext)."""
        return TlsConfig(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)

    @property
    def listen_target(self) -> str:
        """The gRPC bind target of ``listen``."""
        return listen_target(self.listen)

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        if not self.metrics:
            return None
        return http_host_port(self.metrics, "--metrics")


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
