"""Where every mx8 gRPC client channel is built: address, TLS, token, options.

``aio_channel`` (the coordinator client, ``mx8 status``/``mx8 health``) and
``sync_channel`` (the trainer's agent client, whose gRPC threads move the bytes without
an event loop) take the same inputs: an address (``HOST:PORT``, or a unix socket as
``unix:PATH`` / ``unix:///abs/path``), a ``TlsConfig`` (plaintext when empty, mutual
when it names a client certificate), an optional bearer token that rides on every call,
and a message size cap. Which environment variables fill those is the caller's business
(the coordinator's ``MX8_TLS_*`` are not the agent's ``MX8_AGENT_TLS_*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from mx8_common.rpc.security import (
    TlsConfig,
    bearer_token_client_interceptors,
    bearer_token_sync_interceptor,
    channel_credentials,
)

__all__ = [
    "UNLIMITED",
    "aio_channel",
    "channel_options",
    "grpc_target",
    "sync_channel",
    "unix_socket_path",
]

#: ``max_message_bytes`` meaning "no cap" (gRPC's -1).
UNLIMITED = -1


def grpc_target(address: str) -> str:
    """The gRPC target of ``address``: ``unix:PATH``, ``unix://PATH`` and
    ``unix:///abs/path`` become ``unix:rel`` / ``unix:///abs``; ``HOST:PORT`` stays."""
    if not address.startswith("unix:"):
        return address
    path = address[len("unix:") :]
    path = path[2:] if path.startswith("//") else path
    return f"unix://{path}" if path.startswith("/") else f"unix:{path}"


def unix_socket_path(address: str) -> Path | None:
    """The socket file a ``unix:`` address names, None for ``HOST:PORT``."""
    if not address.startswith("unix:"):
        return None
    return Path(grpc_target(address).removeprefix("unix://").removeprefix("unix:"))


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Channel (and server) options capping messages at ``max_message_bytes`` each way."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def aio_channel(
    address: str,
    *,
    tls: TlsConfig,
    token: str | None = None,
    max_message_bytes: int = UNLIMITED,
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``address`` (see the module docstring)."""
    target = grpc_target(address)
    options = channel_options(max_message_bytes)
    interceptors = bearer_token_client_interceptors(token) if token else None
    if tls.enabled:
        return grpc.aio.secure_channel(
            target, channel_credentials(tls), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def sync_channel(
    address: str,
    *,
    tls: TlsConfig,
    token: str | None = None,
    max_message_bytes: int = UNLIMITED,
) -> grpc.Channel:
    """A sync ``grpc.Channel`` to ``address`` (see the module docstring)."""
    target = grpc_target(address)
    options = channel_options(max_message_bytes)
    if tls.enabled:
        channel = grpc.secure_channel(target, channel_credentials(tls), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if token:
        return grpc.intercept_channel(channel, bearer_token_sync_interceptor(token))
    return channel
