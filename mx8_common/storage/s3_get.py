"""GetObject and ListObjectsV2: botocore decides where and how, aiohttp sends the bytes.

botocore's per-request pipeline costs ~1 ms of CPU per GET (measured against the local
S3 server: 1.5-1.7 ms of client CPU per 64 KiB GET through aiobotocore, ~0.7 ms this
way), most of it work whose answer is the same for every key of a bucket: the S3
endpoint ruleset (its cache is keyed on the object key too, so it never hits), event
hooks, response parsing into a dict (dateutil for ``Last-Modified``). ``S3Getter`` asks
botocore once per bucket, by presigning a GET of a probe key: the URL gives the endpoint
and addressing style the ruleset chose, its credential scope the signing region and
service. Each GET is then signed with botocore's own SigV4 signer (credentials from the
same session, refreshed by it) and sent over one pooled aiohttp session.

Whatever that path does not cover goes through the aiobotocore client as before: a
bucket whose probe URL is not a plain SigV4 URL, proxies, and S3's region redirects
(the client's redirector handles those; the bucket then stays on the client). S3 error
bodies become the ``botocore.exceptions.ClientError`` the client would raise, so
``s3_client.translate_s3_error`` stays the one place errors turn into mx8 errors.
Checksums are validated as botocore does by default: the GET asks for them
(``x-amz-checksum-mode: ENABLED``) and the first algorithm the answer carries, in
botocore's priority order, must match the body (``FlexibleChecksumError`` otherwise).

``list_objects_v2`` takes the client's arguments and returns the fields of its answer
that listing reads (``Contents`` Key/Size, ``CommonPrefixes``, ``IsTruncated``,
``NextContinuationToken``). botocore spends ~20-60 ms of CPU parsing one 1,000-key page
(a shape-driven walk and a dateutil parse per key); ElementTree parses it in ~3 ms, which
is what lets many listing requests run at once without the client becoming the limit.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import html
import re
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

import aiohttp
import botocore.httpchecksum
import botocore.httpsession
import botocore.utils
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError, FlexibleChecksumError
from yarl import URL

from mx8_common.storage.s3_client import S3Settings, open_s3_session_client

__all__ = ["S3Getter", "S3Object"]

# Only unreserved characters: its quoted form is itself, so the URL ends with it verbatim.
_PROBE_KEY = "mx8-endpoint-probe"
_PRESIGN_V2 = {"AWSAccessKeyId", "Signature", "Expires"}
# Answers that mean "ask in another region": the client's redirector knows what to do.
_REDIRECT_CODES = {
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "IllegalLocationConstraintException",
    "TemporaryRedirect",
}


def _checksum_classes() -> list[tuple[str, Callable[[], Any]]]:
    """``(algorithm, checksum class)`` in the order botocore validates responses."""
    # botocore keeps these two tables private; without them, the algorithms whose
    # classes it exports publicly (CRC32C/CRC64NVME need awscrt, which then fills them).
    classes: dict[str, Any] = getattr(botocore.httpchecksum, "_CHECKSUM_CLS", None) or {
        "crc32": botocore.httpchecksum.Crc32Checksum,
        "sha1": botocore.httpchecksum.Sha1Checksum,
        "sha256": botocore.httpchecksum.Sha256Checksum,
    }
    order = getattr(
        botocore.httpchecksum,
        "_ALGORITHMS_PRIORITY_LIST",
        ["crc64nvme", "crc32c", "crc32", "sha1", "sha256"],
    )
    return [(name, classes[name]) for name in order if name in classes]


_CHECKSUMS = _checksum_classes()


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a bucket's objects are and how to sign for them (from the probe URL)."""

    base: str  # everything before the quoted key: "https://host/bucket/" or "https://b.host/"
    region: str
    service: str


class S3Object:
    """One GET's answer: its size headers, then ``await read()`` for the body (once)."""

    __slots__ = ("_read", "content_length", "content_range")

    def __init__(
        self, content_length: int, content_range: str | None, read: Callable[[], Any]
    ) -> None:
        self.content_length = content_length
        self.content_range = content_range
        self._read = read

    async def read(self) -> bytes:
        """The whole body (checked against the checksum S3 sent, if any)."""
        data: bytes = await self._read()
        return data


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_LIST_PARAMS = {
    "Prefix": "prefix",
    "Delimiter": "delimiter",
    "MaxKeys": "max-keys",
    "StartAfter": "start-after",
    "ContinuationToken": "continuation-token",
}


_KEY = re.compile(r"<Key>([^<]*)</Key>")
_SIZE = re.compile(r"<Size>\s*(\d+)\s*</Size>")
_COMMON = re.compile(r"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>")
_TRUNCATED = re.compile(r"<IsTruncated>\s*true\s*</IsTruncated>")
_NEXT_TOKEN = re.compile(r"<NextContinuationToken>([^<]*)</NextContinuationToken>")


def _list_text(value: str, url: bool) -> str:
    if "&" in value:
        value = html.unescape(value)  # XML character references
    if url and ("%" in value or "+" in value):
        value = unquote_plus(value)
    return value


def _parse_list_fast(body: bytes) -> dict[str, Any] | None:
    """``_parse_list`` by regular expressions over S3's fixed layout (~5x faster), or
    None when the counts do not add up (an unusual layout: ElementTree then parses it)."""
    text = body.decode("utf-8")
    if not text.lstrip().startswith("<?xml") and not text.lstrip().startswith("<List"):
        return None
    keys = _KEY.findall(text)
    sizes = _SIZE.findall(text)
    commons = _COMMON.findall(text)
    if not (
        len(keys) == len(sizes) == text.count("<Contents>")
        and len(commons) == text.count("<CommonPrefixes>")
        and "<ListBucketResult" in text
    ):
        return None
    url = "<EncodingType>url</EncodingType>" in text
    resp: dict[str, Any] = {
        "IsTruncated": _TRUNCATED.search(text) is not None,
        "KeyCount": len(keys) + len(commons),
    }
    if keys:
        resp["Contents"] = [
            {"Key": _list_text(key, url), "Size": int(size)}
            for key, size in zip(keys, sizes, strict=True)
        ]
    if commons:
        resp["CommonPrefixes"] = [{"Prefix": _list_text(p, url)} for p in commons]
    token = _NEXT_TOKEN.search(text)
    if token and token.group(1):
        resp["NextContinuationToken"] = html.unescape(token.group(1))
    return resp


def _parse_list(body: bytes) -> dict[str, Any]:
    """The ListObjectsV2 fields listing reads, keys URL-decoded (``encoding-type=url``)."""
    fast = _parse_list_fast(body)
    if fast is not None:
        return fast
    root = ET.fromstring(body)
    ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
    url = root.findtext(ns + "EncodingType") == "url"

    def text(value: str | None) -> str:
        value = value or ""
        return unquote_plus(value) if url else value

    contents_tag, prefixes_tag = ns + "Contents", ns + "CommonPrefixes"
    key_tag, size_tag, prefix_tag = ns + "Key", ns + "Size", ns + "Prefix"
    contents: list[dict[str, Any]] = []
    prefixes: list[dict[str, str]] = []
    for el in root:
        if el.tag == contents_tag:
            contents.append(
                {"Key": text(el.findtext(key_tag)), "Size": int(el.findtext(size_tag) or 0)}
            )
        elif el.tag == prefixes_tag:
            prefixes.append({"Prefix": text(el.findtext(prefix_tag))})
    resp: dict[str, Any] = {
        "IsTruncated": root.findtext(ns + "IsTruncated") == "true",
        "KeyCount": len(contents) + len(prefixes),
    }
    if contents:
        resp["Contents"] = contents
    if prefixes:
        resp["CommonPrefixes"] = prefixes
    token = root.findtext(ns + "NextContinuationToken")
    if token:
        resp["NextContinuationToken"] = token
    return resp


def _client_error(
    status: int, body: bytes, headers: Any, operation: str = "GetObject"
) -> ClientError:
    """The ``ClientError`` botocore would raise for this S3 error answer."""
    code, message = str(status), ""
    with contextlib.suppress(ET.ParseError, ValueError):
        root = ET.fromstring(body) if body else None
        if root is not None:
            code = root.findtext("Code") or code
            message = root.findtext("Message") or ""
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


def _check_checksum(headers: Any, data: bytes) -> None:
    for algorithm, cls in _CHECKSUMS:
        expected = headers.get(f"x-amz-checksum-{algorithm}")
        if expected is None:
            continue
        if "-" in expected:
            # A checksum of part checksums (multipart upload): botocore skips it too.
            continue
        checksum = cls()
        checksum.update(data)
        if checksum.digest() != base64.b64decode(expected):
            raise FlexibleChecksumError(
                error_msg=f"Expected checksum {expected} did not match calculated "
                f"checksum: {checksum.b64digest()}"
            )
        return


class S3Getter:
    """GETs of S3 objects; ``async with`` owns the aiobotocore client and the HTTP pool.

    ``lean=False`` sends every GET through the aiobotocore client (the escape hatch, and
    the reference the lean path is tested against); so does a borrowed ``client``, which
    is never closed.
    """

    def __init__(
        self, settings: S3Settings | None = None, *, lean: bool = True, client: Any = None
    ) -> None:
        self._settings = settings or S3Settings.from_env()
        self._lean = lean and client is None
        self._stack = contextlib.AsyncExitStack()
        self.client: Any = client
        self._credentials: Any = None
        self._ca_bundle: str | None = None
        self._ssl: ssl.SSLContext | None = None
        self._checksum_mode = False
        self._http: aiohttp.ClientSession | None = None
        self._routes: dict[str, _Route | None] = {}

    async def __aenter__(self) -> S3Getter:
        if self.client is not None:
            return self
        session, self.client = await self._stack.enter_async_context(
            open_s3_session_client(self._settings)
        )
        if self._lean:
            # The credentials the client resolved (the session caches them): refreshable
            # ones refresh themselves on get_frozen_credentials().
            self._credentials = await session.get_credentials()
            # What botocore verifies TLS with when the client is given no ``verify``.
            self._ca_bundle = session.get_config_variable("ca_bundle")
            # botocore asks for checksums unless told to only when required.
            validation = getattr(self.client.meta.config, "response_checksum_validation", None)
            self._checksum_mode = validation in (None, "when_supported")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP pool and the client; safe to call twice."""
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def get(
        self,
        bucket: str,
        key: str,
        range_header: str | None,
        *,
        if_unmodified_since: str | None = None,
    ) -> AsyncIterator[S3Object]:
        """GET ``key`` (``Range: range_header`` if given); S3 errors raise ``ClientError``.

        ``if_unmodified_since`` (an HTTP date) makes S3 refuse a newer object with 412
        (``PreconditionFailed``).
        """
        route = await self._route(bucket) if self._credentials is not None else None
        if route is not None:
            async with self._get_lean(route, bucket, key, range_header, if_unmodified_since) as obj:
                if obj is not None:
                    yield obj
                    return
        async with self._get_client(bucket, key, range_header, if_unmodified_since) as obj:
            yield obj

    async def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
        """One ListObjectsV2 page (the client's arguments; see the module docstring)."""
        bucket = kwargs["Bucket"]
        route = await self._route(bucket) if self._credentials is not None else None
        if route is not None:
            resp = await self._list_lean(route, bucket, kwargs)
            if resp is not None:
                return resp
        return dict(await self.client.list_objects_v2(**kwargs))

    async def _list_lean(
        self, route: _Route, bucket: str, kwargs: dict[str, Any]
    ) -> dict[str, Any] | None:
        """None when S3 redirects: the caller then asks the client instead."""
        params = {"list-type": "2", "encoding-type": "url"}
        for name, param in _LIST_PARAMS.items():
            if kwargs.get(name) is not None:
                params[param] = str(kwargs[name])
        # The bucket itself: "https://bucket.host/" or path-style "http://host/bucket".
        base = route.base if urlsplit(route.base).path == "/" else route.base.rstrip("/")
        # Query already in SigV4's canonical form (sorted, RFC 3986), so it is signed as sent.
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
        )
        url = f"{base}?{query}"
        credentials = await self._credentials.get_frozen_credentials()
        request = AWSRequest("GET", url)
        S3SigV4Auth(credentials, route.service, route.region).add_auth(request)
        async with self._session().get(
            URL(url, encoded=True),
            headers=dict(request.headers.items()),
            allow_redirects=False,
            ssl=self._ssl_context() if url.startswith("https:") else True,
        ) as resp:
            body = await resp.read()
            if resp.status >= 300:
                error = _client_error(resp.status, body, resp.headers, "ListObjectsV2")
                if 300 <= resp.status < 400 or error.response["Error"]["Code"] in _REDIRECT_CODES:
                    self._routes[bucket] = None
                    return None
                raise error
            date = resp.headers.get("Date")
        page = _parse_list(body)
        # The server's clock, as botocore's answer carries it: the snapshot's listing time.
        page["ResponseMetadata"] = {"HTTPHeaders": {"date": date} if date else {}}
        return page

    @contextlib.asynccontextmanager
    async def _get_client(
        self, bucket: str, key: str, range_header: str | None, if_unmodified_since: str | None
    ) -> AsyncIterator[S3Object]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if range_header is not None:
            kwargs["Range"] = range_header
        if if_unmodified_since is not None:
            kwargs["IfUnmodifiedSince"] = email.utils.parsedate_to_datetime(if_unmodified_since)
        resp = await self.client.get_object(**kwargs)
        body = resp["Body"]
        async with body:
            yield S3Object(int(resp.get("ContentLength", -1)), resp.get("ContentRange"), body.read)

    @contextlib.asynccontextmanager
    async def _get_lean(
        self,
        route: _Route,
        bucket: str,
        key: str,
        range_header: str | None,
        if_unmodified_since: str | None,
    ) -> AsyncIterator[S3Object | None]:
        """Yields None when S3 redirects: the caller then asks the client instead."""
        url = route.base + quote(key, safe="/~")
        headers = {"x-amz-checksum-mode": "ENABLED"} if self._checksum_mode else {}
        if range_header is not None:
            headers["Range"] = range_header
        if if_unmodified_since is not None:
            headers["If-Unmodified-Since"] = if_unmodified_since
        credentials = await self._credentials.get_frozen_credentials()
        request = AWSRequest("GET", url, headers=headers)
        S3SigV4Auth(credentials, route.service, route.region).add_auth(request)
        # encoded=True: send the path exactly as signed (yarl would re-quote it otherwise).
        async with self._session().get(
            URL(url, encoded=True),
            headers=dict(request.headers.items()),
            allow_redirects=False,
            ssl=self._ssl_context() if url.startswith("https:") else True,
        ) as resp:
            status = resp.status
            if status >= 300:
                error = _client_error(status, await resp.read(), resp.headers)
                if 300 <= status < 400 or error.response["Error"]["Code"] in _REDIRECT_CODES:
                    # The bucket lives elsewhere: the client's redirector handles it.
                    self._routes[bucket] = None
                    yield None
                    return
                raise error
            response_headers = resp.headers

            async def read() -> bytes:
                data = await resp.read()
                if self._checksum_mode:
                    _check_checksum(response_headers, data)
                return data

            yield S3Object(
                int(response_headers.get("Content-Length", -1)),
                response_headers.get("Content-Range"),
                read,
            )

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=self._settings.max_pool_connections)
            self._http = aiohttp.ClientSession(
                connector=connector,
                # botocore's timeouts: connect 10 s, 60 s without a byte.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
                # Bytes as stored, like botocore (a gzip-encoded object stays gzip).
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._http

    def _ssl_context(self) -> ssl.SSLContext:
        # Made on the first https GET only: loading a CA bundle costs ~10 ms of CPU.
        if self._ssl is None:
            # The CA bundle botocore would verify with: AWS_CA_BUNDLE / ca_bundle, else its own.
            cafile = botocore.httpsession.get_cert_path(self._ca_bundle or True)
            self._ssl = ssl.create_default_context(cafile=cafile)
        return self._ssl

    async def _route(self, bucket: str) -> _Route | None:
        if bucket not in self._routes:
            if ":" in bucket or bucket.endswith("--x-s3"):
                # Access point / Outposts ARNs and directory buckets sign differently.
                self._routes[bucket] = None
                return None
            url = await self.client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
            )
            self._routes[bucket] = self._parse_probe(url)
        return self._routes[bucket]

    def _parse_probe(self, url: str) -> _Route | None:
        """The route a presigned probe URL shows, or None where GETs need the client."""
        head, _, query = url.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        scope = params.get("X-Amz-Credential", "").split("/")
        if (
            urlsplit(head).scheme not in ("http", "https")
            or not head.endswith("/" + _PROBE_KEY)
            # Query parameters other than a SigV2/SigV4 presign's own mean a special endpoint.
            or any(not (name.startswith("X-Amz-") or name in _PRESIGN_V2) for name in params)
            or self.client.meta.config.proxies
            or botocore.utils.get_environ_proxies(head)
        ):
            return None
        # botocore presigns S3 with SigV2 or SigV4 depending on region and version; its
        # header-signed requests use SigV4 with the client's region unless the ruleset
        # says otherwise (then S3 answers AuthorizationHeaderMalformed, and the bucket
        # goes to the client, see _REDIRECT_CODES).
        region = scope[2] if len(scope) == 5 else self.client.meta.region_name
        return _Route(base=head[: -len(_PROBE_KEY)], region=region, service="s3")
