"""Azure Blob Storage over its REST API with aiohttp: paged listing and (ranged) GETs.

Why beside obstore's ``AzureStore`` (``native_store``): obstore runs its I/O on a
process-global runtime that a ``fork`` kills. Listing (done where a snapshot is resolved,
often the parent of DataLoader workers) therefore never touches obstore, and a process
forked after its parent used obstore reads through this client instead
(``native_runtime_forked``). Same settings (``AzureSettings``), same errors.

Requests are signed with the account's shared key, carry the SAS, or a bearer token
(``AZURE_STORAGE_TOKEN``, or Microsoft Entra credentials through the ``azure-identity``
package when it is installed: ``pip install 'mx8[azure]'``).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import time
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, BinaryIO

import aiohttp
import yarl

from mx8_common.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    StorageError,
    TransientStorageError,
)
from mx8_common.storage.azure_store import (
    AZURE_CREDENTIALS_HINT,
    AzureSettings,
    split_az_location,
)
from mx8_common.storage.rest_client import (
    CloudObject,
    CloudWording,
    ListAnswer,
    RestClient,
    http_time,
    range_header,
)

__all__ = ["AzureRestClient"]

_VERSION = "2021-08-06"
_SCOPE = "https://storage.azure.com/.default"


_STANDARD = (
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-MD5",
    "Content-Type",
    "Date",
    "If-Modified-Since",
    "If-Match",
    "If-None-Match",
    "If-Unmodified-Since",
    "Range",
)


def _shared_key(account: str, key: str, method: str, url: yarl.URL, headers: dict[str, str]) -> str:
    """The SharedKey ``Authorization`` value of a request with these headers."""
    nl = "\n"
    standard = [headers.get(name, "") for name in _STANDARD]
    if standard[2] == "0":
        standard[2] = ""  # Content-Length 0 is signed as empty (version 2015-02-21 on)
    ms = "".join(f"{k}:{v}{nl}" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
    query = sorted((k.lower(), v) for k, v in url.query.items())
    resource = f"/{account}{url.raw_path}" + "".join(f"{nl}{k}:{v}" for k, v in query)
    to_sign = method + nl + "".join(v + nl for v in standard) + ms + resource
    digest = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
    return f"SharedKey {account}:{base64.b64encode(digest).decode()}"


class _EntraToken:
    """A bearer token from azure-identity's DefaultAzureCredential, refreshed before expiry."""

    def __init__(self) -> None:
        self._credential: Any = None
        self._token: Any = None
        self._lock = asyncio.Lock()

    async def header(self, location: str) -> str:
        async with self._lock:
            if self._token is None or self._token.expires_on - time.time() < 120:
                self._token = await asyncio.to_thread(self._fetch, location)
            return f"Bearer {self._token.token}"

    def _fetch(self, location: str) -> Any:
        try:
            from azure.identity import (  # type: ignore[import-not-found, unused-ignore]
                DefaultAzureCredential,
            )
        except ImportError:
            raise AccessDeniedError(
                f"no Azure credentials found to read {location}; {AZURE_CREDENTIALS_HINT} (or "
                "pip install 'mx8[azure]' for Microsoft Entra / managed identity credentials)",
                location=location,
            ) from None
        try:
            if self._credential is None:
                self._credential = DefaultAzureCredential()
            return self._credential.get_token(_SCOPE)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AccessDeniedError(
                f"no Azure credentials found to read {location} ({first[:160]}); "
                f"{AZURE_CREDENTIALS_HINT}",
                location=location,
            ) from None


_WORDING = CloudWording(
    cloud="Azure",
    endpoint_noun="Azure blob endpoint",
    endpoint_env="AZURE_STORAGE_ENDPOINT",
    denied_advice=f"check the credentials ({AZURE_CREDENTIALS_HINT}) and the container's "
    "access policy",
)


def _answer_error(status: int, code: str, location: str) -> StorageError:
    if code == "ContainerNotFound":
        return BucketNotFoundError(
            f"container of {location} does not exist in storage account "
            f"{AzureSettings.from_env().account!r}; check the container name, "
            "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ENDPOINT",
            location=location,
        )
    return _WORDING.status_error(status, location, answer=code)


class AzureRestClient(RestClient):
    """One aiohttp pool for Azure listing and GETs; ``async with`` owns it."""

    wording = _WORDING

    def __init__(self, settings: AzureSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or AzureSettings.from_env()
        self._entra: _EntraToken | None = None

    async def _request(
        self,
        path: str,
        query: dict[str, str],
        location: str,
        extra: dict[str, str] | None = None,
        *,
        method: str = "GET",
        if_match: str = "",
        tolerate: frozenset[int] = frozenset(),
        body: bytes | BinaryIO | None = None,
        body_size: int | None = None,
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        settings = self.settings
        account = settings.require_account(location)
        endpoint = settings.blob_endpoint(location)
        if settings.sas:
            query = {**query, **dict(urllib.parse.parse_qsl(settings.sas))}
        url = yarl.URL(endpoint + path, encoded=True).with_query(query)
        headers = {
            "x-ms-date": email.utils.formatdate(usegmt=True),
            "x-ms-version": _VERSION,
            **(extra or {}),
        }
        if if_match:
            headers["If-Match"] = if_match
        if body is not None:
            size = len(body) if isinstance(body, bytes) else body_size
            headers["Content-Length"] = str(size)
            # Set (and signed) here: aiohttp would add its own after signing otherwise.
            headers["Content-Type"] = "application/octet-stream"
        if settings.account_key and not settings.sas:
            headers["Authorization"] = _shared_key(
                account, settings.account_key, method, url, headers
            )
        elif settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        elif not settings.sas:
            self._entra = self._entra or _EntraToken()
            headers["Authorization"] = await self._entra.header(location)
        async with self._send(
            method, url, location=location, endpoint=endpoint, headers=headers, data=body
        ) as resp:
            answer = await resp.read()
            code = resp.headers.get("x-ms-error-code", "")
            ok = resp.status in (200, 201, 202, 206) or (
                resp.status in tolerate and code != "ContainerNotFound"
            )
            if not ok:
                raise _answer_error(resp.status, code, location)
            return resp, answer

    async def list_page(
        self,
        container: str,
        prefix: str,
        *,
        delimiter: bool = False,
        token: str | None = None,
        max_results: int = 1000,
    ) -> ListAnswer:
        """One List Blobs answer under ``prefix`` (blob names in lexicographic order)."""
        location = f"az://{container}/{prefix}"
        query = {"restype": "container", "comp": "list", "maxresults": str(max_results)}
        if prefix:
            query["prefix"] = prefix
        if delimiter:
            query["delimiter"] = "/"
        if token:
            query["marker"] = token
        _resp, body = await self._request(
            "/" + urllib.parse.quote(container, safe=""), query, location
        )
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise TransientStorageError(
                f"unreadable listing answer for {location}: {exc}", location=location
            ) from None
        blobs = []
        for blob in root.iter("Blob"):
            props = blob.find("Properties")
            size = props.findtext("Content-Length") if props is not None else None
            modified = props.findtext("Last-Modified") if props is not None else None
            blobs.append((blob.findtext("Name") or "", int(size or 0), http_time(modified)))
        prefixes = [p.findtext("Name") or "" for p in root.iter("BlobPrefix")]
        return ListAnswer(blobs, prefixes, root.findtext("NextMarker") or None)

    @staticmethod
    def _blob_path(location: str) -> str:
        container, key = split_az_location(location)
        return f"/{urllib.parse.quote(container, safe='')}/{urllib.parse.quote(key, safe='/')}"

    async def head(self, location: str) -> tuple[int, str] | None:
        """``(size, etag)`` of the blob, or None if there is none."""
        resp, _ = await self._request(
            self._blob_path(location), {}, location, method="HEAD", tolerate=frozenset({404})
        )
        if resp.status == 404:
            return None
        return int(resp.headers.get("Content-Length", "0")), resp.headers.get("ETag", "")

    async def put(
        self,
        location: str,
        data: bytes | BinaryIO,
        *,
        size: int | None = None,
        create: bool = False,
        if_match: str = "",
    ) -> str | None:
        """Write the blob (``data`` bytes, or a file of ``size`` bytes streamed as sent); its
        new ETag, or None when ``create`` found one already there or ``if_match`` no longer
        matches (or the blob is gone)."""
        extra = {"x-ms-blob-type": "BlockBlob"}
        if create:
            extra["If-None-Match"] = "*"
        resp, _ = await self._request(
            self._blob_path(location),
            {},
            location,
            extra,
            method="PUT",
            if_match=if_match,
            tolerate=frozenset({404, 409, 412}),
            body=data,
            body_size=size,
        )
        if resp.status in (404, 409, 412):
            return None
        return resp.headers.get("ETag", "")

    async def delete_if_match(self, location: str, etag: str) -> bool:
        """Delete the blob if its ETag is still ``etag``; False if it changed or is gone."""
        resp, _body = await self._request(
            self._blob_path(location),
            {},
            location,
            method="DELETE",
            if_match=etag,
            tolerate=frozenset({404, 412}),
        )
        return resp.status == 202

    async def stream(self, location: str, sink: Any) -> bool:
        """Feed the blob to ``sink(chunk)`` in 1 MiB chunks (read whole first: for manifests,
        not samples); False if there is none."""
        endpoint = self.settings.blob_endpoint(location)
        resp, body = await self._request(
            self._blob_path(location), {}, location, tolerate=frozenset({404})
        )
        if resp.status == 404:
            return False
        with self.wording.transport_errors(location, endpoint):
            for i in range(0, len(body), 1 << 20):
                sink(body[i : i + (1 << 20)])
        return True

    async def get(
        self, location: str, start: int | None = None, length: int | None = None
    ) -> CloudObject:
        """The blob at ``az://container/key`` (or ``length`` bytes from ``start``)."""
        wanted = range_header(start, length)
        extra = {"x-ms-range": wanted} if wanted else {}
        resp, body = await self._request(self._blob_path(location), {}, location, extra)
        return CloudObject.from_answer(resp, body, ranged=wanted is not None)
