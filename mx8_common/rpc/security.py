"""Transport security of mx8's gRPC daemons: TLS (optionally mutual) and a shared bearer token.

One module for both ends so the coordinator, the agent and their clients agree on it:

- ``TlsConfig`` names PEM files (``--tls-cert/--tls-key/--tls-ca`` or ``MX8_TLS_CERT`` /
  ``MX8_TLS_KEY`` / ``MX8_TLS_CA``, read by the daemons' configs and by
  ``client_config.CoordinatorClientConfig``). On a server, cert + key turn TLS on and a CA makes it
  mutual (clients must present a certificate that CA signed). On a client, the CA is what
  the server's certificate is checked against and cert + key are the client's identity.
- ``BearerTokenInterceptor`` refuses calls without ``authorization: Bearer <MX8_AUTH_TOKEN>``
  with UNAUTHENTICATED and a message naming what is missing; gRPC health checks stay open
  so load balancers and Kubernetes probes need no token.
- ``bearer_token_client_interceptors`` (``grpc.aio``) / ``bearer_token_sync_interceptor``
  (sync channels) / ``token_metadata`` add the token on the client side.
- ``warn_if_exposed`` logs a loud warning when a daemon binds a non-loopback address
  without a token (anyone who can reach the port could lease work or read the manifest).
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mx8_common.errors import ConfigError, NodeIdentityError
from mx8_common.obs.events import get_logger

__all__ = [
    "AUTH_TOKEN_ENV",
    "OPEN_METHODS",
    "BearerTokenInterceptor",
    "TlsConfig",
    "bearer_token_client_interceptors",
    "bearer_token_sync_interceptor",
    "certificate_names",
    "channel_credentials",
    "check_node_identity",
    "is_loopback",
    "server_credentials",
    "token_metadata",
    "warn_if_exposed",
]

#: The environment variable holding the shared bearer token (servers and clients).
AUTH_TOKEN_ENV = "MX8_AUTH_TOKEN"

#: Methods callable without a token: health checks, so probes work unchanged.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

_AUTH_KEY = "authorization"
_SCHEME = "bearer "


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """PEM file paths of one end of a TLS connection; all None means plaintext."""

    #: Certificate chain presented by this end (server cert, or client cert for mutual TLS).
    cert: str | None = None
    #: Private key of ``cert``.
    key: str | None = None
    #: CA bundle: a server verifies client certs with it (mutual TLS); a client the server's.
    ca: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            given, missing = (
                ("--tls-cert", "--tls-key")
                if self.key is None
                else (
                    "--tls-key",
                    "--tls-cert",
                )
            )
            raise ConfigError(
                f"{given} needs {missing} too: a certificate and its private key go together "
                "(or set both MX8_TLS_CERT and MX8_TLS_KEY)"
            )

    @property
    def enabled(self) -> bool:
        """True when any TLS file is named (a client with only a CA still speaks TLS)."""
        return any(p is not None for p in (self.cert, self.key, self.ca))

    @property
    def mutual(self) -> bool:
        """On a server: clients must present a certificate signed by ``ca``."""
        return self.cert is not None and self.ca is not None


def _read_pem(path: str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path!r} cannot be read ({exc.strerror or exc}); point {flag} at a PEM "
            "file this process can read"
        ) from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{flag} {path!r} is not a PEM file (no -----BEGIN line)")
    return data


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server TLS credentials; mutual (client certs required) when ``tls.ca`` is set."""
    if tls.cert is None or tls.key is None:
        raise ConfigError(
            "a TLS server needs --tls-cert and --tls-key (MX8_TLS_CERT / MX8_TLS_KEY); "
            "--tls-ca alone only verifies clients"
        )
    cert = _read_pem(tls.cert, "--tls-cert")
    key = _read_pem(tls.key, "--tls-key")
    ca = _read_pem(tls.ca, "--tls-ca")
    assert cert is not None and key is not None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Client TLS credentials: verify the server against ``tls.ca`` (system roots if unset),
    and present ``tls.cert``/``tls.key`` when the server wants mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls.ca, "--tls-ca"),
        private_key=_read_pem(tls.key, "--tls-key"),
        certificate_chain=_read_pem(tls.cert, "--tls-cert"),
    )


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return ((_AUTH_KEY, f"Bearer {token}"),)


def _check_token(metadata: Any, token: str, token_env: str = AUTH_TOKEN_ENV) -> str | None:
    """None when ``metadata`` carries ``token``, else the reason it does not (naming
    ``token_env``, the variable the client should set)."""
    values = [v for k, v in (metadata or ()) if k == _AUTH_KEY]
    if not values:
        return (
            "no bearer token: this server requires 'authorization: Bearer <token>' call "
            f"metadata; set {token_env} on the client to the server's token"
        )
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not value.lower().startswith(_SCHEME):
        return (
            "the authorization metadata is not 'Bearer <token>'; set "
            f"{token_env} on the client and let mx8 send it"
        )
    # Constant-time: the comparison must not leak how much of a guess was right.
    if not hmac.compare_digest(value[len(_SCHEME) :].encode(), token.encode()):
        return (
            f"the bearer token does not match this server's {token_env}; set the same "
            f"{token_env} on the client as on the server"
        )
    return None


def _denying_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails with UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    serde = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, **serde)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny, **serde)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, **serde)
    return grpc.stream_stream_rpc_method_handler(deny, **serde)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls whose ``authorization`` metadata lacks ``Bearer <token>``.

    Methods in ``open_methods`` (health checks by default) pass without a token.
    ``token_env`` is the variable refusals tell the client to set (the agent's trainers
    use ``MX8_AGENT_AUTH_TOKEN``, not the coordinator's ``MX8_AUTH_TOKEN``).
    """

    def __init__(
        self,
        token: str,
        *,
        open_methods: frozenset[str] = OPEN_METHODS,
        token_env: str = AUTH_TOKEN_ENV,
    ) -> None:
        if not token:
            raise ConfigError(f"{token_env} is empty; set a non-empty shared token")
        self._token = token
        self._open = open_methods
        self._token_env = token_env

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._open:
            return handler
        problem = _check_token(
            handler_call_details.invocation_metadata, self._token, self._token_env
        )
        if problem is None:
            return handler
        return _denying_handler(handler, problem)


def _with_token(
    details: grpc.aio.ClientCallDetails, metadata: tuple[tuple[str, str], ...]
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*(details.metadata or ()), *metadata),
        details.credentials,
        details.wait_for_ready,
    )


class _UnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._metadata), request)


class _UnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._metadata), request)


class _StreamUnaryToken(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_token(details, self._metadata), requests)


class _StreamStreamToken(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_token(details, self._metadata), requests)


def bearer_token_client_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for ``grpc.aio`` channels that add ``authorization: Bearer <token>``.

    One per call shape: a ``grpc.aio`` channel files each interceptor under the first
    shape it implements only, so a single class covering all four would miss streams.
    """
    metadata = token_metadata(token)
    return [
        _UnaryUnaryToken(metadata),
        _UnaryStreamToken(metadata),
        _StreamUnaryToken(metadata),
        _StreamStreamToken(metadata),
    ]


class _SyncCallDetails(
    collections.namedtuple(
        "_SyncCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, d: Any) -> _SyncCallDetails:
        return _SyncCallDetails(
            d.method,
            d.timeout,
            [*(d.metadata or ()), *self._metadata],
            d.credentials,
            d.wait_for_ready,
            d.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def bearer_token_sync_interceptor(token: str) -> Any:
    """An interceptor for sync channels (``grpc.intercept_channel``) that adds
    ``authorization: Bearer <token>`` to every call, of every shape."""
    return _SyncToken(token_metadata(token))


def is_loopback(listen: str) -> bool:
    """True when a gRPC bind target only accepts local connections (loopback or unix:)."""
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0] if ":" in listen else listen
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to anything: treat it as exposed.
        return False


def warn_if_exposed(
    listen: str,
    token: str | None,
    *,
    tls: TlsConfig | None = None,
    component: str,
    token_env: str = AUTH_TOKEN_ENV,
) -> bool:
    """Log a loud warning when ``listen`` is reachable from other hosts without protection.

    Returns True when a warning was logged. No token on a non-loopback address is the loud
    case; a token without TLS there is warned about too, since it crosses the wire in clear.
    ``token_env`` is the variable the warning tells the operator to set.
    """
    if is_loopback(listen):
        return False
    log = get_logger(component)
    if not token:
        log.warning(
            "grpc_exposed_without_auth",
            listen=listen,
            message=(
                f"WARNING: listening on {listen} (reachable from other hosts) with no "
                f"{token_env}: anyone who reaches this port can use it (join the job, "
                f"take leases or batches, read the manifest). Set {token_env} (and --tls-cert/"
                "--tls-key) or bind 127.0.0.1"
            ),
        )
        return True
    if tls is None or not tls.enabled:
        log.warning(
            "grpc_token_without_tls",
            listen=listen,
            message=(
                f"listening on {listen} with {token_env} but without TLS: the token "
                "crosses the network in clear text; add --tls-cert/--tls-key"
            ),
        )
        return True
    return False


def certificate_names(context: Any) -> set[str]:
    """The peer certificate's common name and subject alternative names (empty without a
    client certificate), from a ``grpc.aio`` servicer context."""
    auth = context.auth_context() or {}
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names.update(v.decode(errors="replace") for v in auth.get(key, ()))
    return names


def check_node_identity(node_id: str, context: Any) -> None:
    """``NodeIdentityError`` unless ``node_id`` is a name of the peer's certificate: with
    mutual TLS a node may only speak for the node its certificate names."""
    names = certificate_names(context)
    if node_id not in names:
        shown = ", ".join(sorted(names)) or "no client certificate"
        raise NodeIdentityError(
            f"node id {node_id!r} is not a name of this client's certificate ({shown}); "
            "issue the agent a certificate whose CN or a DNS SAN is its --node-id, or start "
            "it with --node-id set to one of those names",
            node_id=node_id,
        )
