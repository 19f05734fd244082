"""``CoordinatorClientConfig``: how every client (agents, ``mx8 status``/``health``) reaches
the coordinator, from ``MX8_COORDINATOR_URL``, ``MX8_TLS_*``, ``MX8_AUTH_TOKEN`` and
``MX8_GRPC_MAX_MESSAGE_BYTES``.

The coordinator's own config re-uses the address and message-cap declarations, so each of
these variables has one default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mx8_common.config_fields import load_env, parse_size, setting
from mx8_common.errors import ConfigError
from mx8_common.rpc.security import AUTH_TOKEN_ENV, TlsConfig

__all__ = ["DEFAULT_COORDINATOR_URL", "DEFAULT_MAX_MESSAGE_BYTES", "CoordinatorClientConfig"]

DEFAULT_COORDINATOR_URL = "127.0.0.1:50051"
#: Default gRPC message cap (send and receive); ``GetManifest`` refuses manifests over it.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class CoordinatorClientConfig:
    """How a client reaches the coordinator: address, TLS, token and message cap."""

    address: str = setting(
        DEFAULT_COORDINATOR_URL,
        env="MX8_COORDINATOR_URL",
        flag="--coordinator",
        help="coordinator address HOST:PORT",
    )
    tls_ca: str | None = setting(
        None,
        env="MX8_TLS_CA",
        help="CA bundle the client checks the coordinator's certificate against "
        "(any MX8_TLS_* turns client TLS on)",
    )
    tls_cert: str | None = setting(
        None,
        env="MX8_TLS_CERT",
        help="client certificate, for a coordinator that runs mutual TLS (--tls-ca)",
    )
    tls_key: str | None = setting(None, env="MX8_TLS_KEY", help="private key of MX8_TLS_CERT")
    auth_token: str | None = setting(
        None,
        env=AUTH_TOKEN_ENV,
        help="bearer token sent to the coordinator; must equal the coordinator's",
        secret=True,
    )
    max_message_bytes: int = setting(
        DEFAULT_MAX_MESSAGE_BYTES,
        env="MX8_GRPC_MAX_MESSAGE_BYTES",
        flag="--grpc-max-message-bytes",
        parse=parse_size,
        help="gRPC message cap (match the coordinator's)",
    )

    def __post_init__(self) -> None:
        # Empty values count as unset, as they always have for these variables.
        for name in ("tls_ca", "tls_cert", "tls_key", "auth_token"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if self.max_message_bytes <= 0:
            raise ConfigError(
                f"MX8_GRPC_MAX_MESSAGE_BYTES must be > 0, got {self.max_message_bytes}"
            )
        # A certificate without its key fails here, naming both variables.
        TlsConfig(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)

    @property
    def tls(self) -> TlsConfig:
        """The client's TLS files (all None: plaintext)."""
        return TlsConfig(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> CoordinatorClientConfig:
        """Defaults, then env vars, then ``overrides`` (None values are ignored)."""
        return load_env(cls, environ, **overrides)
