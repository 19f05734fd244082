"""The gRPC error boundary over real servers on port 0: every mx8 error class raised in a
handler comes back to the real clients (the coordinator client, the trainer's agent
client) as the same class with the same fields, on unary and streaming calls alike;
anything else is INTERNAL with a generic message and a logged event."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from support.logs import Events

from mx8._agent_client import AgentStreamClient
from mx8_common import errors
from mx8_common.errors import (
    AgentError,
    CoordinatorError,
    LeaseNotFoundError,
    ManifestChangedError,
    ManifestTruncated,
    Mx8Error,
    ObjectChangedError,
    RequestError,
    TrainerResumeError,
)
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.rpc.errors import ERRORS, ErrorBoundary, status_code_for
from mx8_common.rpc.proto import agent_pb2, agent_pb2_grpc
from mx8_common.rpc.proto import coordinator_pb2 as cpb
from mx8_common.rpc.proto import coordinator_pb2_grpc as cpb_grpc
from mx8_common.rpc.security import TlsConfig

CLASSES = [
    cls
    for cls in (getattr(errors, name) for name in errors.__all__)
    if isinstance(cls, type) and issubclass(cls, Mx8Error)
]


def _fields(cls: type[Mx8Error]) -> dict[str, Any]:
    """A value for every keyword field of ``cls`` (ints for int fields, else strings)."""
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    hints = typing.get_type_hints(cls.__init__) if params else {}
    return {
        p.name: 7 if int in (typing.get_args(hints[p.name]) or (hints[p.name],)) else f"{p.name}-x"
        for p in params
    }


def sample(cls: type[Mx8Error]) -> Mx8Error:
    return cls(f"{cls.__name__} went wrong; fix it", **_fields(cls))


def assert_same(got: BaseException, sent: Mx8Error, origin: str) -> None:
    assert type(got) is type(sent), (got, sent)
    for name, value in _fields(type(sent)).items():
        assert getattr(got, name) == value, (type(sent).__name__, name, getattr(got, name))
    assert str(got) == f"{sent} (reported by {origin})"


class Raising(cpb_grpc.CoordinatorServicer, agent_pb2_grpc.AgentServicer):
    """Handlers raise ``error`` (``GetManifestStream`` after one chunk); ``RequestLease``
    aborts with a status of its own."""

    def __init__(self) -> None:
        self.error: BaseException = RuntimeError("unset")

    async def Heartbeat(self, request: Any, context: Any) -> cpb.HeartbeatResponse:
        raise self.error

    async def GetManifestStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield cpb.ManifestChunk(data=b"x", offset=0)
        raise self.error

    async def RequestLease(self, request: Any, context: Any) -> cpb.RequestLeaseResponse:
        # A handler that picks its own status: the boundary lets it through untouched.
        await context.abort(grpc.StatusCode.UNAVAILABLE, "come back in a moment")

    async def DescribeJob(self, request: Any, context: Any) -> agent_pb2.JobDescription:
        raise self.error

    async def Stream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        await anext(aiter(request_iterator))
        raise self.error
        yield  # an async generator, like the agent's own Stream


@pytest.fixture
async def served() -> AsyncIterator[tuple[Raising, str]]:
    servicer = Raising()
    server = grpc.aio.server(interceptors=[ErrorBoundary("test")])
    cpb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    agent_pb2_grpc.add_AgentServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def test_error_registry_names_every_class_once() -> None:
    assert len({cls.event for cls in CLASSES}) == len(CLASSES)
    assert {cls.event: cls for cls in CLASSES} == ERRORS


async def test_error_boundary_coordinator_client_rebuilds_every_class(
    served: tuple[Raising, str],
) -> None:
    servicer, address = served
    async with CoordinatorClient(address, tls=TlsConfig(), token="") as client:
        for cls in CLASSES:
            servicer.error = sent = sample(cls)
            with pytest.raises(Mx8Error) as info:
                await client.heartbeat("job", "node")
            assert_same(info.value, sent, f"the coordinator at {address}")
            assert info.value.__cause__.code() == status_code_for(sent)


async def test_error_boundary_coordinator_stream_rebuilds_every_class(
    served: tuple[Raising, str],
) -> None:
    servicer, address = served
    async with CoordinatorClient(address, tls=TlsConfig(), token="") as client:
        for cls in CLASSES:
            servicer.error = sent = sample(cls)
            chunks = []
            with pytest.raises(Mx8Error) as info:
                async for chunk in client.get_manifest_stream("job", "h"):
                    chunks.append(chunk)
            assert len(chunks) == 1  # the error came after the first message
            assert_same(info.value, sent, f"the coordinator at {address}")


def agent_calls(
    servicer: Raising, address: str, errors_to_send: list[BaseException], call: Any
) -> list[BaseException]:
    """What ``call(client)`` raises while handlers raise each of ``errors_to_send``, on
    one trainer client (runs in a thread: the trainer's client is synchronous)."""
    got: list[BaseException] = []
    with AgentStreamClient(
        address, job_id="job", local_rank=0, batch_size=1, tls=TlsConfig(), token=""
    ) as client:
        for sent in errors_to_send:
            servicer.error = sent
            try:
                call(client)
            except BaseException as exc:
                got.append(exc)
            else:
                raise AssertionError(f"{sent!r} was not raised")
    return got


async def test_error_boundary_agent_client_rebuilds_every_class(
    served: tuple[Raising, str],
) -> None:
    servicer, address = served
    sent = [sample(cls) for cls in CLASSES]
    got = await asyncio.to_thread(agent_calls, servicer, address, sent, lambda c: c.describe())
    for one_sent, one_got in zip(sent, got, strict=True):
        assert_same(one_got, one_sent, f"mx8d-agent at {address}")


@pytest.mark.parametrize(
    "cls", [ObjectChangedError, TrainerResumeError, ManifestTruncated, RequestError]
)
async def test_error_boundary_agent_stream_rebuilds_the_error(
    served: tuple[Raising, str], cls: type[Mx8Error]
) -> None:
    # One client per stream (an ended stream ends its client), so a few classes, not all:
    # the unary test above covers every class through the same boundary.
    servicer, address = served
    sent = sample(cls)
    (got,) = await asyncio.to_thread(agent_calls, servicer, address, [sent], lambda c: next(c))
    assert_same(got, sent, f"mx8d-agent at {address}")


async def test_error_boundary_status_codes_follow_the_table(served: tuple[Raising, str]) -> None:
    servicer, address = served
    async with CoordinatorClient(address, tls=TlsConfig(), token="") as client:
        sc = grpc.StatusCode
        for sent, code in (
            (LeaseNotFoundError("gone", lease_id="L1"), sc.NOT_FOUND),
            (ObjectChangedError("changed", location="s3://b/k"), sc.FAILED_PRECONDITION),
            (ManifestChangedError("moved", expected="a", got="b"), sc.FAILED_PRECONDITION),
            (Mx8Error("anything else"), sc.INTERNAL),
        ):
            servicer.error = sent
            with pytest.raises(type(sent)) as info:
                await client.heartbeat("job", "node")
            assert info.value.__cause__.code() == code


async def test_error_boundary_unknown_exception_is_internal_and_logged(
    served: tuple[Raising, str],
    logs: Events,
) -> None:
    servicer, address = served
    servicer.error = KeyError("secret-internal-detail")
    async with CoordinatorClient(address, tls=TlsConfig(), token="") as client:
        logs.clear()
        with pytest.raises(CoordinatorError) as info:
            await client.heartbeat("job", "node")
    assert info.value.code == "INTERNAL"
    # Only a generic line crosses the wire: no exception text, no traceback.
    assert "secret-internal-detail" not in str(info.value)
    assert "Traceback" not in str(info.value) and "rpc_internal_error" in str(info.value)
    (event,) = logs.named("rpc_internal_error")
    assert event["method"] == "/mx8.v1.Coordinator/Heartbeat"
    assert event["error_type"] == "KeyError" and "secret-internal-detail" in event["error"]


async def test_error_boundary_agent_unknown_exception_is_agent_error(
    served: tuple[Raising, str],
) -> None:
    servicer, address = served
    (got,) = await asyncio.to_thread(
        agent_calls, servicer, address, [ZeroDivisionError("boom")], lambda c: c.describe()
    )
    assert isinstance(got, AgentError) and "INTERNAL" in str(got) and "boom" not in str(got)


async def test_error_boundary_lets_a_handlers_own_status_through(
    served: tuple[Raising, str],
) -> None:
    _, address = served
    async with CoordinatorClient(address, tls=TlsConfig(), token="") as client:
        with pytest.raises(CoordinatorError) as info:
            await client.request_lease("job", "node")
    assert info.value.code == "UNAVAILABLE" and "come back in a moment" in str(info.value)


async def test_error_boundary_guards_each_method_once_and_a_new_handler_anew() -> None:
    boundary = ErrorBoundary("test")

    async def behaviour(request: Any, context: Any) -> str:
        return f"answered {request}"

    def continuation(handler: grpc.RpcMethodHandler) -> Any:
        async def found(details: Any) -> grpc.RpcMethodHandler:
            return handler

        return found

    details = SimpleNamespace(method="/mx8.v1.Coordinator/Heartbeat", invocation_metadata=())
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    first = await boundary.intercept_service(continuation(handler), details)
    assert await boundary.intercept_service(continuation(handler), details) is first
    # A service registered anew (another handler for the method) gets its own guard.
    replaced = await boundary.intercept_service(
        continuation(grpc.unary_unary_rpc_method_handler(behaviour)), details
    )
    assert replaced is not first
    assert await replaced.unary_unary("ping", None) == "answered ping"
