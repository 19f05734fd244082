"""The daemon base with a small real daemon: binds (port 0, unix sockets), health and
reflection, the HTTP exporter, run() with FIRST_EXCEPTION, idempotent shutdown, and the
one channel builder (targets, token on sync and aio channels)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Coroutine, Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.eventually import assert_eventually
from support.logs import Events

from mx8_common.errors import ConfigError
from mx8_common.rpc.channels import aio_channel, grpc_target, sync_channel, unix_socket_path
from mx8_common.rpc.daemon import SERVING, Daemon, ServerSettings
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_common.rpc.proto import coordinator_pb2_grpc as pb_grpc
from mx8_common.rpc.security import TlsConfig

SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name


class _Heartbeats(pb_grpc.CoordinatorServicer):
    async def Heartbeat(self, request: Any, context: Any) -> pb.HeartbeatResponse:
        return pb.HeartbeatResponse(world_size=7)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Toy(Daemon):
    """A daemon whose work is ``work`` (None: no tasks) and whose hooks count calls."""

    component = "toy"
    service_name = SERVICE

    def __init__(self, settings: ServerSettings, work: Any = None) -> None:
        super().__init__(settings, shutdown_grace_s=0.1)
        self.work = work
        self.calls: list[str] = []

    def _add_services(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_CoordinatorServicer_to_server(_Heartbeats(), server)

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        return _Hello

    async def _open(self) -> None:
        self.calls.append("open")
        await self.set_health(SERVING)

    def _work(self) -> Iterable[tuple[str, Coroutine[Any, Any, Any]]]:
        return [] if self.work is None else [("work", self.work())]

    async def _drain(self) -> None:
        self.calls.append("drain")

    async def _close(self) -> None:
        self.calls.append("close")


def tcp(**kw: Any) -> ServerSettings:
    return ServerSettings(listen="127.0.0.1:0", max_message_bytes=1 << 20, **kw)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mx8d-", dir="/tmp"))  # short: unix path limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def health_of(address: str, service: str = "") -> str:
    async with aio_channel(address, tls=TlsConfig()) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_daemon_binds_port_zero_with_health_and_reflection() -> None:
    async with Toy(tcp()) as toy:
        assert toy.port and toy.address == f"127.0.0.1:{toy.port}"
        assert await health_of(toy.address) == "SERVING"
        assert await health_of(toy.address, SERVICE) == "SERVING"
        async with aio_channel(toy.address, tls=TlsConfig()) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request])):
                names = {s.name for s in reply.list_services_response.service}
                break
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    assert toy.calls == ["open", "drain", "close"]


async def test_daemon_unix_socket_replaces_a_stale_file_and_is_removed(sock_dir: Path) -> None:
    path = sock_dir / "sub" / "toy.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a killed daemon's leftover socket file
    stale.close()
    async with Toy(ServerSettings(listen=f"unix:{path}", max_message_bytes=1 << 20)) as toy:
        assert toy.address == f"unix://{path}" and toy.port is None
        async with aio_channel(toy.address, tls=TlsConfig()) as channel:
            reply = await pb_grpc.CoordinatorStub(channel).Heartbeat(pb.HeartbeatRequest())
        assert reply.world_size == 7
    assert not path.exists()


async def test_daemon_serves_and_stops_the_http_exporter() -> None:
    async with Toy(tcp(http=("127.0.0.1", 0))) as toy:
        url = f"http://127.0.0.1:{toy.metrics_port}/"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert body == b"hello"
    with pytest.raises(OSError):
        await asyncio.to_thread(urllib.request.urlopen, url, timeout=2)


async def test_daemon_busy_port_is_config_error_and_cleans_up() -> None:
    async with Toy(tcp()) as first:
        second = Toy(ServerSettings(listen=first.address, max_message_bytes=1 << 20))
        with pytest.raises(ConfigError, match=r"cannot listen on .*pick another --listen"):
            await second.start()
        # The failed start shut down what it had: no open, but drain and close ran.
        assert second.calls == ["drain", "close"]


async def test_daemon_run_returns_when_its_work_is_done(logs: Events) -> None:
    done = asyncio.Event()

    async def work() -> None:
        done.set()

    toy = Toy(tcp(), work)
    logs.clear()
    await asyncio.wait_for(toy.run(), 10)
    assert done.is_set() and toy.calls == ["open", "drain", "close"]
    assert [e["event"] for e in logs if e["event"] == "toy_stopped"] == ["toy_stopped"]


async def test_daemon_run_raises_the_first_task_error_after_shutting_down() -> None:
    async def work() -> None:
        raise ValueError("the work broke")

    toy = Toy(tcp(), work)
    with pytest.raises(ValueError, match="the work broke"):
        await asyncio.wait_for(toy.run(), 10)
    assert toy.calls == ["open", "drain", "close"]
    with pytest.raises(grpc.aio.AioRpcError):
        await health_of(toy.address or "")


async def test_daemon_request_shutdown_ends_run_and_cancels_work() -> None:
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    toy = Toy(tcp(), work)
    running = asyncio.create_task(toy.run())
    await assert_eventually(lambda: "open" in toy.calls)
    toy.request_shutdown()  # what a SIGTERM handler calls
    toy.request_shutdown()
    await asyncio.wait_for(running, 10)
    assert cancelled.is_set() and toy.calls == ["open", "drain", "close"]


class SlowToStart(Toy):
    """A daemon whose ``_open`` (resolving a dataset, say) never finishes by itself."""

    async def _open(self) -> None:
        self.calls.append("opening")
        try:
            await asyncio.Event().wait()
        finally:
            self.calls.append("open cancelled")


async def test_daemon_shutdown_while_starting_cancels_the_start_and_run_returns() -> None:
    toy = SlowToStart(tcp())
    running = asyncio.create_task(toy.run())
    await assert_eventually(lambda: "opening" in toy.calls)
    toy.request_shutdown()
    await asyncio.wait_for(running, 10)  # returns, does not raise
    assert toy.calls == ["opening", "open cancelled", "drain", "close"]


async def test_daemon_shutdown_before_run_never_binds() -> None:
    toy = Toy(tcp())
    await toy.shutdown()
    await asyncio.wait_for(toy.run(), 10)
    assert toy.address is None and toy.calls == ["drain", "close"]


async def test_daemon_shutdown_is_idempotent_and_concurrent_calls_wait() -> None:
    toy = Toy(tcp())
    await toy.start()
    await asyncio.gather(toy.shutdown(), toy.shutdown())
    await toy.shutdown()
    assert toy.calls == ["open", "drain", "close"]


@pytest.mark.parametrize(
    ("address", "target", "path"),
    [
        ("127.0.0.1:9", "127.0.0.1:9", None),
        ("unix:rel/a.sock", "unix:rel/a.sock", "rel/a.sock"),
        ("unix://rel/a.sock", "unix:rel/a.sock", "rel/a.sock"),
        ("unix:/run/a.sock", "unix:///run/a.sock", "/run/a.sock"),
        ("unix:///run/a.sock", "unix:///run/a.sock", "/run/a.sock"),
    ],
)
def test_channels_grpc_target_and_socket_path(address: str, target: str, path: str | None) -> None:
    assert grpc_target(address) == target
    assert unix_socket_path(address) == (None if path is None else Path(path))


async def test_channels_carry_the_token_on_sync_and_aio_channels() -> None:
    async with Toy(tcp(auth_token="s3cret")) as toy:
        address = toy.address or ""
        async with aio_channel(address, tls=TlsConfig(), token="s3cret") as channel:
            reply = await pb_grpc.CoordinatorStub(channel).Heartbeat(pb.HeartbeatRequest())
        assert reply.world_size == 7

        def sync_heartbeat(token: str | None) -> Any:
            channel = sync_channel(address, tls=TlsConfig(), token=token)
            try:
                return pb_grpc.CoordinatorStub(channel).Heartbeat(pb.HeartbeatRequest())
            finally:
                channel.close()

        assert (await asyncio.to_thread(sync_heartbeat, "s3cret")).world_size == 7
        with pytest.raises(grpc.RpcError) as info:
            await asyncio.to_thread(sync_heartbeat, None)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
