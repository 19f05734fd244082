"""What the GCS and Azure REST clients (``gcs_client``, ``azure_rest``) share: one aiohttp
pool per client, one way to send a request, and the one boundary where an HTTP status or a
transport failure becomes an mx8 error, in each cloud's words (``CloudWording``).

Retrying is not done here: a ``TransientStorageError`` goes up to the one backoff policy
(the lister's, ``ObjectReader``'s).
"""

from __future__ import annotations

import contextlib
import email.utils
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import aiohttp

from mx8_common.errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)

__all__ = [
    "CloudObject",
    "CloudWording",
    "ListAnswer",
    "RestClient",
    "http_time",
    "parse_content_range",
    "range_header",
]


def http_time(value: str | None) -> float | None:
    """An HTTP date header (``Last-Modified``) as Unix seconds; None if absent or unreadable."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def parse_content_range(value: str) -> tuple[int, int, int | None] | None:
    """``bytes a-b/total`` -> ``(a, b, total)`` (total None for ``*``); None if unreadable."""
    _unit, _, spec = value.partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    try:
        return int(first), int(last), (None if total == "*" else int(total))
    except ValueError:
        return None


def range_header(start: int | None, length: int | None) -> str | None:
    """``bytes=a-b`` for ``length`` bytes from ``start`` (both or neither), else None."""
    if start is None or length is None:
        return None
    return f"bytes={start}-{start + length - 1}"


@dataclass(frozen=True)
class CloudObject:
    """One GET's answer: the bytes and what the server said of the object."""

    data: bytes
    #: Offset of ``data[0]`` in the object (0 for a whole-object GET); -1 when a ranged
    #: request was answered without a usable Content-Range.
    start: int
    #: Size of the whole object; -1 when the server did not say.
    object_size: int
    #: Last modification, Unix seconds; None when the server did not say.
    last_modified: float | None
    #: The object's ETag ("" when the server sent none).
    etag: str = ""

    @classmethod
    def from_answer(cls, resp: aiohttp.ClientResponse, data: bytes, *, ranged: bool) -> CloudObject:
        """What the headers of ``resp`` (a 200 or 206 carrying ``data``) say."""
        start, size = 0, resp.content_length if resp.content_length is not None else -1
        content_range = resp.headers.get("Content-Range")
        if content_range:
            span = parse_content_range(content_range)
            start = span[0] if span else -1
            size = span[2] if span and span[2] is not None else -1
        elif ranged:
            start = -1  # a whole object answered a ranged request: no usable start
        return cls(
            data,
            start,
            size,
            http_time(resp.headers.get("Last-Modified")),
            resp.headers.get("ETag", ""),
        )


@dataclass(frozen=True)
class ListAnswer:
    """One listing answer: ``(name, size, last modified)`` per object in the server's order,
    the folder prefixes (delimiter listings) and the token of the next page (None on the
    last)."""

    objects: list[tuple[str, int, float | None]]
    prefixes: list[str]
    next_token: str | None


@dataclass(frozen=True, kw_only=True)
class CloudWording:
    """How one cloud's errors read: its name, its endpoint and what to set."""

    #: "GCS", "Azure": as in "GCS answered 503 for gs://b/k".
    cloud: str
    #: "GCS endpoint", "Azure blob endpoint".
    endpoint_noun: str
    #: The variable that points requests at another endpoint.
    endpoint_env: str
    #: What to check after "access denied to <location> (...); ".
    denied_advice: str

    def status_error(
        self, status: int, location: str, *, answer: str = "", detail: str = ""
    ) -> StorageError:
        """The most specific mx8 error for an HTTP ``status`` about ``location`` (a missing
        bucket is the caller's to tell apart); ``answer`` is how the cloud named the error
        (default: the status), ``detail`` an excerpt of its body for the catch-all."""
        answer = answer or str(status)
        if status == 404:
            return ObjectNotFoundError(
                f"{location} does not exist (it was deleted or renamed since the snapshot?)",
                location=location,
            )
        if status in (401, 403):
            return AccessDeniedError(
                f"access denied to {location} ({self.cloud} answered {answer}); "
                f"{self.denied_advice}",
                location=location,
            )
        if status == 429 or status >= 500:
            return TransientStorageError(
                f"{self.cloud} answered {answer} for {location}; retrying may help",
                location=location,
            )
        tail = f": {detail[:200]}" if detail else ""
        return StorageError(
            f"{self.cloud} answered {answer} for {location}{tail}", location=location
        )

    @contextlib.contextmanager
    def transport_errors(self, location: str, endpoint: str) -> Iterator[None]:
        """Transport failures inside as one-line ``TransientStorageError`` naming the endpoint
        (mx8 errors pass through)."""
        try:
            yield
        except StorageError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientStorageError(
                f"cannot reach the {self.endpoint_noun} {endpoint} for {location}: "
                f"{type(exc).__name__}: {exc}; is {self.endpoint_env} right and the server up?",
                location=location,
            ) from None


class RestClient:
    """One aiohttp pool, opened on the first request; ``async with`` or ``aclose()`` closes it."""

    wording: ClassVar[CloudWording]

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
                connector=aiohttp.TCPConnector(limit=256),
            )
        return self._session

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        url: Any,
        *,
        location: str,
        endpoint: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The answer to one request; transport failures while sending or reading it become
        the cloud's ``TransientStorageError``."""
        with self.wording.transport_errors(location, endpoint):
            async with self._http().request(
                method, url, params=params, headers=headers, data=data
            ) as resp:
                yield resp
