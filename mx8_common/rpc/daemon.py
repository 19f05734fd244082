"""``Daemon``: the lifecycle both mx8 daemons share (the Temporal SDK worker's pattern).

``start()`` builds one ``grpc.aio`` server (the token check and the ``ErrorBoundary``
interceptors, the message cap), adds the daemon's services, ``grpc.health.v1`` (NOT_SERVING
until the daemon says otherwise) and reflection, binds ``HOST:PORT`` (port 0 picks a
free one) or a ``unix:`` socket, starts it, starts the HTTP exporter when asked, then
calls the daemon's ``_open()``. A failing start shuts down what it started and raises.
A ``unix:`` socket is owned through a lock file beside it (``<path>.lock``, held until
shutdown): a second daemon on a live socket is refused with a ``ConfigError`` naming the
owner's host and pid; a stale socket (its daemon was killed) is replaced.

``run()`` starts, adds the daemon's ``_work()`` tasks, and waits on every task it owns
with ``asyncio.wait(FIRST_EXCEPTION)``: it returns when they all finish (an agent whose
job drained) or ``shutdown()`` cancelled them, and raises the first task error. A
``shutdown()`` while ``run()`` is still starting (a coordinator indexing a bucket)
cancels the start and ``run()`` returns.

``shutdown()`` cancels those tasks (and a start in progress), lets the daemon
``_drain()`` (report, stop leasing), turns health NOT_SERVING, stops the server with a
grace period, lets the daemon ``_close()`` its resources, stops the HTTP exporter and
removes the socket file. A shutdown event plus a done event make it safe to call twice
or concurrently (the second call waits for the first); ``request_shutdown()`` is the sync
form signal handlers use. ``async with`` is ``start()`` + ``shutdown()``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mx8_common.errors import ConfigError
from mx8_common.obs.events import emit, get_logger
from mx8_common.obs.http_exporter import HttpExporter
from mx8_common.owner_lock import OwnerLock, OwnerLockHeld
from mx8_common.rpc.channels import channel_options, grpc_target, unix_socket_path
from mx8_common.rpc.errors import ErrorBoundary
from mx8_common.rpc.security import (
    AUTH_TOKEN_ENV,
    BearerTokenInterceptor,
    TlsConfig,
    is_loopback,
    server_credentials,
    warn_if_exposed,
)

__all__ = ["Daemon", "ServerSettings"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """How a daemon serves: where, how securely, and whether it exports HTTP."""

    #: gRPC bind address: ``HOST:PORT`` (port 0: any free port) or ``unix:PATH``.
    listen: str
    #: TLS files of the server (empty: plaintext; with ``ca``: mutual TLS).
    tls: TlsConfig = field(default_factory=TlsConfig)
    #: Bearer token every call but health checks must carry (None: no check).
    auth_token: str | None = None
    #: The variable refusals and warnings tell clients to set for the token.
    token_env: str = AUTH_TOKEN_ENV
    #: Largest gRPC message either way.
    max_message_bytes: int
    #: HTTP exporter ``(host, port)`` (port 0: any free port); None: no HTTP server.
    http: tuple[str, int] | None = None


def _socket_is_live(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    if not path.is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False  # refused: its daemon is gone
    finally:
        probe.close()
    return True


class Daemon(abc.ABC):
    """Base of ``Coordinator`` and ``Agent`` (see the module docstring).

    Subclasses set ``component`` and ``service_name`` and implement ``_add_services``;
    the other hooks default to doing nothing.
    """

    #: Names the daemon in events and messages (``"coordinator"``, ``"agent"``).
    component: ClassVar[str]
    #: The daemon's own gRPC service, as health checks and reflection name it.
    service_name: ClassVar[str]

    def __init__(self, server: ServerSettings, *, shutdown_grace_s: float) -> None:
        self.server_settings = server
        self._grace = shutdown_grace_s
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._http = HttpExporter(f"mx8-{self.component}-http")
        self._socket_path: Path | None = None
        self._socket_lock: OwnerLock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._shutdown_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The bound port (also when 0 was asked); None before ``start()`` or on a socket.
        self.port: int | None = None
        #: What clients dial: ``host:port`` or ``unix:///path``; None before ``start()``.
        self.address: str | None = None
        #: The HTTP exporter's bound port, None when it does not run.
        self.metrics_port: int | None = None

    # -- hooks ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _add_services(self, server: grpc.aio.Server) -> None:
        """Add the daemon's own servicers (health and reflection are added for it)."""

    def _http_handler(self) -> type[BaseHTTPRequestHandler] | None:
        """The HTTP exporter's handler; None serves no HTTP even if asked to."""
        return None

    async def _claim(self) -> None:
        """Take what only one daemon may own (a state dir) before binding anything."""
        return None

    async def _open(self) -> None:
        """After the server listens: get ready to serve (resolve, ingest...)."""
        return None

    def _work(self) -> Iterable[tuple[str, Coroutine[Any, Any, Any]]]:
        """``(name, coroutine)`` pairs ``run()`` runs as tasks beside the server."""
        return ()

    async def _drain(self) -> None:
        """First step of shutdown, after the tasks stopped: stop new work, report."""
        return None

    async def _close(self) -> None:
        """After the server stopped: close clients, logs, stores."""
        return None

    def _stopped_fields(self) -> dict[str, Any]:
        """Fields of the ``<component>_stopped`` event."""
        return {}

    # -- helpers for subclasses -----------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the daemon: ``run()`` watches it, shutdown cancels it."""
        if self._shutdown_requested.is_set():
            coro.close()
            raise asyncio.CancelledError(f"the {self.component} is shutting down")
        task = asyncio.create_task(coro, name=f"mx8-{self.component}-{name}")
        self._tasks.add(task)
        return task

    async def set_health(self, status: Any) -> None:
        """Set the health of the server and of ``service_name`` alike."""
        await self.health.set("", status)
        await self.health.set(self.service_name, status)

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, serve health NOT_SERVING, export HTTP, then ``_open()``. Idempotent; does
        nothing once shutdown was asked for."""
        if self._started or self._shutdown_requested.is_set():
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        try:
            await self._claim()
            await self._bind()
            self._start_http()
            await self._open()
        except BaseException:
            # A shutdown already under way (it cancelled us) cleans up itself.
            if not self._shutdown_requested.is_set():
                await self.shutdown()
            raise

    async def _bind(self) -> None:
        s = self.server_settings
        # Read the PEM files before binding: a bad path fails start-up with its flag named.
        credentials = server_credentials(s.tls) if s.tls.enabled else None
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if s.auth_token:
            interceptors.append(BearerTokenInterceptor(s.auth_token, token_env=s.token_env))
        interceptors.append(ErrorBoundary(self.component))
        warn_if_exposed(
            s.listen, s.auth_token, tls=s.tls, component=self.component, token_env=s.token_env
        )
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[*channel_options(s.max_message_bytes), ("grpc.so_reuseport", 0)],
        )
        self._add_services(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (self.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        target = grpc_target(s.listen)
        path = unix_socket_path(target)
        if path is not None:
            self._claim_socket(path)
        try:
            if credentials is None:
                port = server.add_insecure_port(target)
            else:
                port = server.add_secure_port(target, credentials)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {s.listen}: {exc}; is another {self.component} running "
                "there? pick another --listen"
            ) from exc
        self._server = server
        self._socket_path = path
        await self.set_health(NOT_SERVING)
        await server.start()
        if path is not None:
            self.address = f"unix://{path}"
        else:
            self.port = port
            self.address = f"{target.rpartition(':')[0]}:{port}"

    def _claim_socket(self, path: Path) -> None:
        """Own ``path`` before binding it: a live daemon there is refused, a stale socket
        (its daemon was killed) replaced. The lock beside it is held until shutdown."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the socket folder {path.parent}: {exc.strerror}; pick another "
                "--listen unix: path"
            ) from None
        lock = OwnerLock(path.with_name(path.name + ".lock"))
        try:
            lock.acquire()
        except OwnerLockHeld as held:
            raise ConfigError(
                f"another {self.component} ({held.owner}) is serving on {path}; stop it or "
                "pick another --listen unix: path"
            ) from None
        self._socket_lock = lock
        if _socket_is_live(path):
            # A daemon of an older version (no lock file) still answers there.
            lock.release()
            self._socket_lock = None
            raise ConfigError(
                f"another process is serving on {path}; stop it or pick another --listen unix: path"
            )
        # A socket file left by a killed daemon would make the bind fail.
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()

    def _start_http(self) -> None:
        s = self.server_settings
        handler = self._http_handler()
        if s.http is None or handler is None:
            return
        host, port = s.http
        if not s.auth_token and not is_loopback(f"[{host}]:{port}"):
            get_logger(self.component).warning(
                "http_exposed_without_auth",
                listen=f"{host}:{port}",
                message=(
                    f"WARNING: the status/metrics port {host}:{port} is reachable from other "
                    f"hosts and no {s.token_env} is set: anyone there can read the job's "
                    f"status (dataset link, manifest hash). Set {s.token_env} or serve "
                    "--metrics on a bare PORT (loopback only)"
                ),
            )
        try:
            self.metrics_port = self._http.start(host, port, handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc}; pick another --metrics port"
            ) from exc

    # -- run ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, run ``_work()`` beside the server until it finishes, a task fails or
        ``shutdown()``; then shut down and raise the first task error, if any."""
        self._starting = asyncio.ensure_future(self.start())
        try:
            await self._starting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._shutdown_requested.is_set() or (current and current.cancelling()):
                raise  # run() itself was cancelled, not the start by shutdown()
        finally:
            self._starting = None
        if self._shutdown_requested.is_set():
            await self.shutdown()
            return
        for name, coro in self._work():
            self.spawn(coro, name)
        tasks = set(self._tasks)
        try:
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            else:
                await self._shutdown_requested.wait()
        finally:
            await self.shutdown()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    # -- stop -----------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Start ``shutdown()`` without waiting for it (for signal handlers)."""
        if self._shutdown_task is None and not self._shutdown_requested.is_set():
            loop = self._loop or asyncio.get_running_loop()
            self._shutdown_task = loop.create_task(self.shutdown())

    async def shutdown(self) -> None:
        """Stop everything (see the module docstring). Safe to call twice."""
        if self._shutdown_requested.is_set():
            await self._done.wait()
            return
        self._shutdown_requested.set()
        try:
            starting = self._starting
            if starting is not None and starting is not asyncio.current_task():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            await self._cancel_tasks()
            await self._drain()
            if self._server is not None:
                await self.set_health(NOT_SERVING)
                await self._server.stop(self._grace)
            await self._close()
            await asyncio.to_thread(self._http.stop)
            if self._socket_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._socket_path.unlink()
            if self._socket_lock is not None:
                self._socket_lock.release()
            emit(self.component, f"{self.component}_stopped", **self._stopped_fields())
        finally:
            self._done.set()

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Their errors are run()'s to raise; here they only have to be over.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
