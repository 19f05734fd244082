"""``CoordinatorConfig``: every knob of ``mx8-coordinator``, as a flag and an ``MX8_*`` env var."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mx8_common.config_fields import (
    http_host_port,
    load_config,
    setting,
    shared,
    split_host_port,
)
from mx8_common.errors import ConfigError
from mx8_common.rpc.client_config import DEFAULT_MAX_MESSAGE_BYTES, CoordinatorClientConfig
from mx8_common.rpc.security import TlsConfig
from mx8_common.sample_order import MAX_BLOCK_SIZE, MODES, RANK_EXACT
from mx8_common.snapshot.config import SnapshotResolverConfig

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_BLOCK_SIZE",
    "MAX_EPOCHS",
    "MAX_LEASE_TTL_MS",
    "MAX_WORLD_SIZE",
    "STREAM_COMPRESSIONS",
    "CoordinatorConfig",
    "load_coordinator_config",
]

#: Upper bounds of the job's shape (the agents refuse a registration past them too).
MAX_WORLD_SIZE = 1 << 16
MAX_EPOCHS = 1 << 20
#: One day: a longer lease/heartbeat is a typo (and 2**32 ms overflows the wire's uint32).
MAX_LEASE_TTL_MS = 86_400_000
#: How ``GetManifestStream`` chunks may be encoded (``mx8_common.manifest.chunk_codec``;
#: negotiated per request, so an agent that asks for none still gets raw chunks).
STREAM_COMPRESSIONS = ("zlib", "none")


@dataclass(frozen=True, kw_only=True)
class CoordinatorConfig:
    """Settings of the head-node coordinator daemon (``mx8-coordinator``)."""

    dataset: str = setting(
        "", env="MX8_DATASET_LINK", help="dataset link (s3://bucket/prefix/, /abs/dir, a manifest)"
    )
    listen: str = setting(
        "127.0.0.1:50051", env="MX8_COORDINATOR_LISTEN", help="gRPC listen address HOST:PORT"
    )
    job_id: str = setting("default", env="MX8_JOB_ID", help="job id every node must present")
    mode: str = setting(
        RANK_EXACT,
        env="MX8_JOB_MODE",
        help="rank-exact: each trainer rank gets embedded mode's batches, equal steps (DDP); "
        "dynamic: trainers take leased batches as they ask (inference, preprocessing)",
    )
    world_size: int = setting(1, env="MX8_WORLD_SIZE", help="number of nodes expected")
    min_world_size: int | None = setting(
        None,
        env="MX8_MIN_WORLD_SIZE",
        help="nodes that must register before ranks freeze (default: --world-size)",
    )
    block_size: int = setting(65536, env="MX8_BLOCK_SIZE", help="samples per lease block")
    shuffle: bool = setting(False, env="MX8_SHUFFLE", help="shuffle block and in-block order")
    seed: int = setting(0, env="MX8_SEED", help="shuffle seed")
    epochs: int = setting(1, env="MX8_EPOCHS", help="number of passes over the dataset")
    lease_ttl_ms: int = setting(
        10000, env="MX8_LEASE_TTL_MS", help="lease/node lifetime without a report or heartbeat"
    )
    heartbeat_interval_ms: int = setting(
        1000, env="MX8_HEARTBEAT_INTERVAL_MS", help="how often nodes should heartbeat"
    )
    store: str | None = shared(SnapshotResolverConfig, "store_root")
    state_dir: str | None = setting(
        None,
        env="MX8_COORDINATOR_STATE_DIR",
        help="directory of the lease log, or a store URL (s3://bucket/prefix/ or "
        "file:///shared/dir) holding it as segments, which --standby coordinators take over "
        "(unset: no lease log, a restart starts over)",
    )
    standby: bool = setting(
        False,
        env="MX8_COORDINATOR_STANDBY",
        help="start as a standby: serve health NOT_SERVING until the leader stops renewing its "
        "leader record for --leader-ttl-ms, then take the next term, replay the log and serve "
        "(needs --state-dir as a store URL)",
    )
    leader_ttl_ms: int | None = setting(
        None,
        env="MX8_COORDINATOR_LEADER_TTL_MS",
        help="with --state-dir in a store: how long the leader record may go unrenewed before "
        "a standby takes over (default: --lease-ttl-ms); a leader that cannot renew stops "
        "leasing after half of it",
    )
    state_flush_ms: int = setting(
        0,
        env="MX8_COORDINATOR_STATE_FLUSH_MS",
        help="with --state-dir in a store: extra wait gathering log records into one segment "
        "(one PUT). 0: write as soon as the previous segment is stored; records that arrive "
        "meanwhile share the next one, so PUTs never outpace the store's write latency. An RPC "
        "that writes the log is answered once its segment is stored",
    )
    manifest_stream_compression: str = setting(
        "zlib",
        env="MX8_COORDINATOR_MANIFEST_STREAM_COMPRESSION",
        help="zlib or none: how GetManifestStream chunks are encoded for agents that accept "
        "it (zlib sends ~1/8 of the bytes; older agents get raw chunks)",
    )
    metrics: str | None = setting(
        None,
        env="MX8_COORDINATOR_METRICS",
        help="status page and Prometheus: PORT (loopback only) or HOST:PORT (unset: off); "
        "with MX8_AUTH_TOKEN set, / and /api/status need it as a bearer token",
    )
    # How the dataset is indexed: SnapshotResolverConfig's settings, as flags.
    recursive: bool = shared(SnapshotResolverConfig, "recursive")
    label_mode: str = shared(SnapshotResolverConfig, "label_mode")
    external_sort: bool = shared(SnapshotResolverConfig, "external_sort")
    spill_keys_per_run: int = shared(SnapshotResolverConfig, "spill_keys_per_run")
    list_concurrency: int = shared(SnapshotResolverConfig, "list_concurrency")
    lock_stale_ms: int = shared(SnapshotResolverConfig, "lock_stale_ms")
    wait_timeout_ms: int = shared(SnapshotResolverConfig, "wait_timeout_ms")
    show_progress: bool | None = shared(SnapshotResolverConfig, "show_progress")
    files: str = shared(SnapshotResolverConfig, "files")
    max_message_bytes: int = shared(
        CoordinatorClientConfig,
        "max_message_bytes",
        help="gRPC message cap; GetManifest refuses larger manifests",
    )
    tls_cert: str | None = setting(
        None, env="MX8_TLS_CERT", help="PEM certificate chain of the gRPC server (turns TLS on)"
    )
    tls_key: str | None = setting(None, env="MX8_TLS_KEY", help="PEM private key of --tls-cert")
    tls_ca: str | None = setting(
        None,
        env="MX8_TLS_CA",
        help="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)",
    )
    tls_bind_node_id: bool = setting(
        False,
        env="MX8_TLS_BIND_NODE_ID",
        help="with --tls-ca: every request's node id must be the client certificate's CN or "
        "a DNS SAN, so one agent cannot register or report as another",
    )
    auth_token: str | None = setting(
        None,
        env="MX8_AUTH_TOKEN",
        help="shared bearer token every client must send (prefer the env var: flags show in ps)",
        secret=True,
    )

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if not self.dataset:
            raise ConfigError("no dataset: pass --dataset LINK or set MX8_DATASET_LINK")
        if not self.job_id:
            raise ConfigError("--job-id must not be empty")
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        split_host_port(self.listen, "--listen")
        if self.metrics is not None:
            http_host_port(self.metrics, "--metrics")
        if self.manifest_stream_compression not in STREAM_COMPRESSIONS:
            raise ConfigError(
                f"--manifest-stream-compression {self.manifest_stream_compression!r} is not "
                f"one of {', '.join(STREAM_COMPRESSIONS)}"
            )
        positive: dict[str, Any] = {
            "--world-size": self.world_size,
            "--block-size": self.block_size,
            "--epochs": self.epochs,
            "--lease-ttl-ms": self.lease_ttl_ms,
            "--heartbeat-interval-ms": self.heartbeat_interval_ms,
            "--grpc-max-message-bytes": self.max_message_bytes,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{flag} must be > 0, got {value}")
        # Every value travels to the agents in a proto field; one past its width (or past
        # any sane job) would start a coordinator every agent then fails against.
        for flag, (value, most) in {
            "--world-size": (self.world_size, MAX_WORLD_SIZE),
            "--block-size": (self.block_size, MAX_BLOCK_SIZE),
            "--epochs": (self.epochs, MAX_EPOCHS),
            "--lease-ttl-ms": (self.lease_ttl_ms, MAX_LEASE_TTL_MS),
            "--heartbeat-interval-ms": (self.heartbeat_interval_ms, MAX_LEASE_TTL_MS),
        }.items():
            if value > most:
                raise ConfigError(f"{flag} {value} is out of range: it must be in [1, {most}]")
        if self.standby and not self.state_in_store:
            raise ConfigError(
                "--standby needs --state-dir as a store URL (s3://bucket/prefix/ or "
                "file:///shared/dir) that the leader writes: a local directory has one owner"
            )
        if self.leader_ttl_ms is not None and not 100 <= self.leader_ttl_ms <= MAX_LEASE_TTL_MS:
            raise ConfigError(
                f"--leader-ttl-ms {self.leader_ttl_ms} is out of range: it must be in "
                f"[100, {MAX_LEASE_TTL_MS}]"
            )
        if not 0 <= self.state_flush_ms < self.leader_ttl // 2:
            raise ConfigError(
                f"--state-flush-ms {self.state_flush_ms} must be in [0, half of the leader TTL "
                f"{self.leader_ttl}): a segment must be stored while the leader may still lease"
            )
        if self.min_world_size is not None and not 1 <= self.min_world_size <= self.world_size:
            raise ConfigError(
                f"--min-world-size {self.min_world_size} must be in [1, --world-size "
                f"{self.world_size}]"
            )
        if self.heartbeat_interval_ms >= self.lease_ttl_ms:
            raise ConfigError(
                f"--heartbeat-interval-ms {self.heartbeat_interval_ms} must be below "
                f"--lease-ttl-ms {self.lease_ttl_ms}, or live nodes would be declared departed"
            )
        self.resolver_config()  # a bad indexing setting fails here, naming its flag
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"--seed {self.seed} must be in [0, 2**64)")
        tls = self.tls  # raises when only one of cert/key is given
        if tls.ca is not None and tls.cert is None:
            raise ConfigError(
                "--tls-ca needs --tls-cert and --tls-key: mutual TLS is TLS plus client "
                "certificates (or set MX8_TLS_CERT and MX8_TLS_KEY)"
            )
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("MX8_AUTH_TOKEN is blank; set a real token or unset it")
        if self.tls_bind_node_id and tls.ca is None:
            raise ConfigError(
                "--tls-bind-node-id needs mutual TLS (--tls-ca): node ids are bound to client "
                "certificates"
            )

    def resolver_config(self) -> SnapshotResolverConfig:
        """How the dataset is indexed; the manifest is served from the stored file only."""
        return SnapshotResolverConfig(
            recursive=self.recursive,
            label_mode=self.label_mode,
            materialize_manifest_bytes=False,
            store_root=self.store,
            external_sort=self.external_sort,
            spill_keys_per_run=self.spill_keys_per_run,
            list_concurrency=self.list_concurrency,
            lock_stale_ms=self.lock_stale_ms,
            wait_timeout_ms=self.wait_timeout_ms,
            show_progress=self.show_progress,
            files=self.files,
        )

    @property
    def tls(self) -> TlsConfig:
        """The server's TLS files (all None: plaintext)."""
        return TlsConfig(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)

    @property
    def state_in_store(self) -> bool:
        """Whether ``--state-dir`` is a store URL (segments, leader record, standbys)."""
        return self.state_dir is not None and self.state_dir.startswith(("s3://", "file://"))

    @property
    def leader_ttl(self) -> int:
        """How long a leader record may go unrenewed (ms) before a standby takes over."""
        return self.lease_ttl_ms if self.leader_ttl_ms is None else self.leader_ttl_ms

    @property
    def freeze_size(self) -> int:
        """Registrations after which ranks are assigned and the job becomes ready."""
        return self.world_size if self.min_world_size is None else self.min_world_size

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen, "--listen")

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        return None if self.metrics is None else http_host_port(self.metrics, "--metrics")


def load_coordinator_config(
    argv: list[str] | None = None, environ: dict[str, str] | None = None
) -> CoordinatorConfig:
    """Defaults, then ``MX8_*`` env vars, then flags."""
    return load_config(
        CoordinatorConfig,
        argv,
        environ=environ,
        prog="mx8-coordinator",
        description="Head-node daemon: owns one job's snapshot and leases sample ranges.",
    )
