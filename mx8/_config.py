"""``TrainerConfig``: the variables a trainer process reads, in one place.

``mx8.load``, ``mx8.DataLoader`` and the agent client take their environment from here
(``TrainerConfig.from_env()``), never from ``os.environ`` directly. Embedded mode also
reads the data plane's ``MX8_FETCH_*`` / ``MX8_MAX_INFLIGHT_BYTES`` (``FetchConfig``,
``ObjectReaderConfig``: the same variables and parsers as ``mx8d-agent``) and the
resolver's ``MX8_SNAPSHOT_*`` (``SnapshotResolverConfig``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mx8_common.config_fields import load_env, setting
from mx8_common.errors import ConfigError
from mx8_common.rpc.security import TlsConfig

__all__ = ["AGENT_AUTH_TOKEN_ENV", "TrainerConfig", "resolve_rank"]

#: The token the agent's ``MX8_AGENT_AUTH_TOKEN`` demands (same name on both ends).
AGENT_AUTH_TOKEN_ENV = "MX8_AGENT_AUTH_TOKEN"


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """What a trainer process (``mx8.load``, ``mx8.DataLoader``) reads from its environment."""

    agent_url: str | None = setting(
        None,
        env="MX8_AGENT_URL",
        help="a local mx8d-agent (unix:///run/mx8/agent.sock) to take the job from; "
        "unset: embedded",
    )
    job_id: str | None = setting(
        None,
        env="MX8_JOB_ID",
        help="distributed: the job the agent must serve (unset: whichever job it serves)",
    )
    rank: int | None = setting(
        None, env="RANK", help="this process's rank, its shard (torchrun sets it; unset: 0)"
    )
    world_size: int | None = setting(
        None, env="WORLD_SIZE", help="the number of ranks, of shards (unset: 1)"
    )
    local_rank: int = setting(
        0, env="LOCAL_RANK", help="distributed: this trainer's index on its host"
    )
    shm_dir: str = setting(
        "/dev/shm",
        env="MX8_SHM_DIR",
        help="distributed: the shared-memory directory the host's agent hands batches over "
        "through (the agent's --shm-dir); empty: take them in the gRPC stream",
    )
    trainer_reads: bool = setting(
        True,
        env="MX8_TRAINER_READS",
        help="distributed, on the agent's host: each rank reads its batches' local files "
        "itself, in parallel, instead of taking their bytes from the agent; 0: the agent "
        "reads them",
    )
    world_wait_timeout_s: float = setting(
        600.0,
        env="MX8_WORLD_WAIT_TIMEOUT_S",
        help="distributed, rank-exact: seconds a rank waits for the rest of its world to "
        "join before JobNotReadyError (mx8.load(world_wait_timeout_s=) wins)",
    )
    agent_tls_ca: str | None = setting(
        None, env="MX8_AGENT_TLS_CA", help="CA bundle the agent's certificate is checked against"
    )
    agent_tls_cert: str | None = setting(
        None,
        env="MX8_AGENT_TLS_CERT",
        help="the trainer's client certificate, for an agent that runs mutual TLS",
    )
    agent_tls_key: str | None = setting(
        None, env="MX8_AGENT_TLS_KEY", help="private key of MX8_AGENT_TLS_CERT"
    )
    agent_auth_token: str | None = setting(
        None,
        env=AGENT_AUTH_TOKEN_ENV,
        help="bearer token sent to the agent; must equal the agent's",
        secret=True,
    )

    def __post_init__(self) -> None:
        # Empty values count as unset, as they always have for these variables.
        for name in (
            "agent_url",
            "job_id",
            "agent_tls_ca",
            "agent_tls_cert",
            "agent_tls_key",
            "agent_auth_token",
        ):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if (self.agent_tls_cert is None) != (self.agent_tls_key is None):
            raise ConfigError(
                "set both MX8_AGENT_TLS_CERT and MX8_AGENT_TLS_KEY (the trainer's client "
                "certificate and its key) or neither"
            )
        if self.local_rank < 0:
            raise ConfigError(f"LOCAL_RANK is {self.local_rank}; it must be >= 0")
        if self.world_wait_timeout_s <= 0:
            raise ConfigError(
                f"MX8_WORLD_WAIT_TIMEOUT_S is {self.world_wait_timeout_s}; it must be > 0"
            )

    @property
    def agent_tls(self) -> TlsConfig:
        """The trainer's TLS files for the agent (all None: plaintext)."""
        return TlsConfig(cert=self.agent_tls_cert, key=self.agent_tls_key, ca=self.agent_tls_ca)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> TrainerConfig:
        """Defaults, then env vars, then ``overrides`` (None values are ignored)."""
        return load_env(cls, environ, **overrides)


def resolve_rank(
    rank: int | None, world_size: int | None, env: TrainerConfig | None = None
) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else torchrun's ``RANK``/``WORLD_SIZE``.

    Embedded and distributed loaders both take their shard from here."""
    env = TrainerConfig.from_env() if env is None else env
    world_size = world_size if world_size is not None else env.world_size or 1
    rank = rank if rank is not None else env.rank or 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"rank {rank} / world_size {world_size} is not a valid shard; "
            "need 0 <= rank < world_size (or set RANK and WORLD_SIZE)"
        )
    return rank, world_size
