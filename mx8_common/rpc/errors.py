"""The one gRPC error boundary: an ``Mx8Error`` crosses the wire as a typed status.

Server side, ``ErrorBoundary`` (a ``grpc.aio.ServerInterceptor`` both daemons install)
wraps every handler. An ``Mx8Error`` leaves as a status whose code comes from
``STATUS_CODES`` and whose details hold one ``google.rpc.ErrorInfo``: reason = the
error's event name, domain = ``"mx8"``, metadata = its fields as strings (``lease_id``,
``line_no``...; unset fields are left out). Any other exception is logged
(``rpc_internal_error``, with its traceback, on the server) and leaves as INTERNAL with
a generic message: a peer never sees a traceback.

Client side, ``error_from_rpc`` rebuilds the same class with the same fields from those
details (``ERRORS`` maps event names to classes), so callers catch types and nothing
parses status message text. A status without mx8 details (an unreachable peer, a
refused token) is the client's to translate (``CoordinatorError`` / ``AgentError``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mx8_common import errors
from mx8_common.errors import (
    ContractError,
    CoordinatorStateLostError,
    JobStateError,
    LeaseLogError,
    LeaseNotFoundError,
    LeaseRangeError,
    LeaseStateError,
    ManifestChangedError,
    ManifestTooLargeError,
    Mx8Error,
    NodeIdentityError,
    RegistrationTokenError,
    RequestError,
    SnapshotNotFoundError,
    StorageError,
    TrainerResumeError,
)
from mx8_common.obs.events import get_logger

__all__ = [
    "DOMAIN",
    "ERRORS",
    "STATUS_CODES",
    "ErrorBoundary",
    "error_fields",
    "error_from_rpc",
    "status_code_for",
    "to_status",
]

#: ``ErrorInfo.domain`` of mx8's errors (details from other domains are not ours).
DOMAIN = "mx8"

#: The status code of each error class; the first match wins, so subclasses come first.
#: Anything not listed is INTERNAL (still with its typed details).
STATUS_CODES: tuple[tuple[type[Mx8Error], grpc.StatusCode], ...] = (
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (LeaseRangeError, grpc.StatusCode.INVALID_ARGUMENT),
    (LeaseNotFoundError, grpc.StatusCode.NOT_FOUND),
    (SnapshotNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NodeIdentityError, grpc.StatusCode.PERMISSION_DENIED),
    (RegistrationTokenError, grpc.StatusCode.PERMISSION_DENIED),
    (LeaseStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (JobStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (StorageError, grpc.StatusCode.FAILED_PRECONDITION),
    (TrainerResumeError, grpc.StatusCode.FAILED_PRECONDITION),
    (ContractError, grpc.StatusCode.FAILED_PRECONDITION),
    (ManifestChangedError, grpc.StatusCode.FAILED_PRECONDITION),
    (CoordinatorStateLostError, grpc.StatusCode.FAILED_PRECONDITION),
    (ManifestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # The log cannot take the record now (store unreachable, leader deposed): retry,
    # maybe at another coordinator behind the same address.
    (LeaseLogError, grpc.StatusCode.UNAVAILABLE),
)

#: Every mx8 error class by its event name (what ``ErrorInfo.reason`` carries).
ERRORS: dict[str, type[Mx8Error]] = {
    cls.event: cls
    for cls in (getattr(errors, name) for name in errors.__all__)
    if isinstance(cls, type) and issubclass(cls, Mx8Error)
}

# Status message and details both ride in the trailers, which peers cap at 8 KiB by
# default: a longer message would turn the whole status into an opaque transport error.
_MAX_MESSAGE_CHARS = 2000
_INTERNAL_EVENT = "rpc_internal_error"


def status_code_for(exc: Mx8Error) -> grpc.StatusCode:
    """The status code a peer sees for ``exc`` (see ``STATUS_CODES``)."""
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


@functools.cache
def _field_kinds(cls: type[Mx8Error]) -> dict[str, type]:
    """The keyword-only constructor fields of ``cls`` and whether each is int or str."""
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    if not params:
        return {}
    hints = typing.get_type_hints(cls.__init__)
    kinds: dict[str, type] = {}
    for p in params:
        hint = hints.get(p.name, str)
        kinds[p.name] = int if int in (typing.get_args(hint) or (hint,)) else str
    return kinds


def error_fields(exc: Mx8Error) -> dict[str, str]:
    """``exc``'s fields (its keyword-only constructor arguments) as strings; None left out."""
    out: dict[str, str] = {}
    for name in _field_kinds(type(exc)):
        value = getattr(exc, name, None)
        if value is not None:
            out[name] = str(value)
    return out


def _clip(message: str) -> str:
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 1] + "…"


def to_status(exc: Mx8Error) -> grpc.Status:
    """The ``grpc.Status`` carrying ``exc`` (code, message, ``ErrorInfo`` details)."""
    info = error_details_pb2.ErrorInfo(reason=exc.event, domain=DOMAIN, metadata=error_fields(exc))
    status = status_pb2.Status(code=status_code_for(exc).value[0], message=_clip(str(exc)))
    status.details.add().Pack(info)
    return rpc_status.to_status(status)


def _rebuild(cls: type[Mx8Error], message: str, metadata: dict[str, str]) -> Mx8Error | None:
    kwargs: dict[str, Any] = {}
    for name, kind in _field_kinds(cls).items():
        if name not in metadata:
            continue
        raw = metadata[name]
        if kind is int:
            try:
                kwargs[name] = int(raw)
            except ValueError:
                continue
        else:
            kwargs[name] = raw
    try:
        return cls(message, **kwargs)
    except TypeError:  # a required field is missing: not something this side sent
        return None


def error_from_rpc(exc: grpc.RpcError, *, origin: str = "") -> Mx8Error | None:
    """The ``Mx8Error`` a peer sent in ``exc``'s status details, or None if it sent none.

    Works on sync and ``grpc.aio`` errors alike. ``origin`` (``"the coordinator at
    host:port"``) is appended to the message so a log line says who refused.
    """
    # AioRpcError carries code, details and trailers like a grpc.Call without being one.
    if not isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return None
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details that disagree with the status line are not ours
        return None
    if status is None:
        return None
    for detail in status.details:
        if not detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            continue
        info = error_details_pb2.ErrorInfo()
        detail.Unpack(info)
        cls = ERRORS.get(info.reason)
        if info.domain != DOMAIN or cls is None:
            continue
        message = f"{status.message} (reported by {origin})" if origin else status.message
        return _rebuild(cls, message, dict(info.metadata))
    return None


Behaviour = Callable[..., Any]


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Turn what a handler raises into a status (see the module docstring).

    ``component`` names the daemon in the ``rpc_internal_error`` event.
    """

    def __init__(self, component: str) -> None:
        self._component = component
        # method -> (its handler, the guarded one): a service's handlers are made once, so
        # each call reuses its method's guard instead of building one.
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = self._wrap(handler, method)
        self._guarded[method] = (handler, guarded)
        return guarded

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            make, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        elif handler.unary_stream is not None:
            make, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        elif handler.stream_unary is not None:
            make, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        else:
            make, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        return make(
            self._guard(behaviour, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard(self, behaviour: Behaviour, method: str) -> Behaviour:
        if inspect.isasyncgenfunction(behaviour):

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    # aclosing: the handler's own cleanup runs when the call ends, not at GC.
                    async with contextlib.aclosing(behaviour(request, context)) as responses:
                        async for response in responses:
                            yield response
                except grpc.aio.AbortError:
                    raise  # the handler chose its status already
                except Exception as exc:
                    await self._abort(context, exc, method)

            return guarded_stream

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(context, exc, method)

        return guarded

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
        if isinstance(exc, Mx8Error):
            await context.abort_with_status(to_status(exc))
        get_logger(self._component).error(
            _INTERNAL_EVENT,
            method=method,
            error_type=type(exc).__name__,
            error=str(exc),
            exc_info=exc,
        )
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error in the {self._component} while handling {method}; its log has "
            f"the details ({_INTERNAL_EVENT})",
        )
