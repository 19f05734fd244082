"""A LIST-only S3-protocol endpoint on 127.0.0.1 with S3's per-request latency.

Real S3 answers a ListObjectsV2 page in ~50-150 ms; moto answers in ~2 ms and spends
most of that in its own CPU. This endpoint answers from a key list held in memory after
a fixed ``latency_s`` (a sleep, so concurrent requests overlap as they do on S3) and
costs little CPU per page, so what a benchmark or test sees is the client's concurrency.

ListObjectsV2 is served as S3 serves it: ``prefix``, ``delimiter`` (``CommonPrefixes``),
``start-after``, ``continuation-token``, ``max-keys`` and ``encoding-type=url`` (which
botocore always asks for). A bucket holds either a sorted key list (``SortedKeys``, or
``GeneratedKeys``: a million keys computed from their index, never stored) answered by
binary search, or a plain list served in the order given, for tests of endpoints that
do not list in order. Buckets in ``denied`` answer 403 AccessDenied; buckets in
``ignore_start_after`` list from the start whatever ``start-after`` says.

``serve_list_endpoint()`` runs it on a thread of this process (tests); ``python -m
mx8_common.testing.list_endpoint`` runs it as its own process (benchmarks, so its CPU
is not the client's) and prints its URL.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import http.server
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import overload
from xml.sax.saxutils import escape

__all__ = [
    "GeneratedKeys",
    "ListEndpoint",
    "SortedKeys",
    "list_endpoint_process",
    "serve_list_endpoint",
]

_NO_BUCKET = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchBucket</Code>'
    b"<Message>The specified bucket does not exist</Message></Error>"
)
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


class SortedKeys(Sequence[str]):
    """Keys in strictly increasing order with their sizes (checked once, here)."""

    def __init__(self, items: Sequence[tuple[str, int]]) -> None:
        self._keys = [key for key, _ in items]
        self._sizes = [size for _, size in items]
        for a, b in zip(self._keys, self._keys[1:], strict=False):
            if not a < b:
                raise ValueError(f"keys are not strictly increasing: {a!r} then {b!r}")

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self._keys[i]

    def size(self, i: int) -> int:
        return self._sizes[i]


class GeneratedKeys(Sequence[str]):
    """``n`` keys made from their index by ``key_of`` (which must increase with it).

    Layouts: ``flat`` (``obj-00000042.bin``) and ``folders`` (1,000 keys per folder,
    ``c00000/img-00000042.jpg``), each under ``prefix``.
    """

    def __init__(self, n: int, key_of: Callable[[int], str]) -> None:
        self.n = n
        self._key_of = key_of

    @classmethod
    def layout(cls, name: str, n: int, prefix: str = "") -> GeneratedKeys:
        if name == "flat":
            return cls(n, lambda i: f"{prefix}obj-{i:08d}.bin")
        if name == "folders":
            return cls(n, lambda i: f"{prefix}c{i // 1000:05d}/img-{i:08d}.jpg")
        raise ValueError(f"unknown key layout {name!r}; use flat or folders")

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self._key_of(j) for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self._key_of(i)

    def size(self, i: int) -> int:
        return 1 + i % 4096


_PLAIN = re.compile(r"[A-Za-z0-9/._-]*")


def _after_prefix(common: str) -> str:
    """The least string greater than every string that starts with ``common``."""
    return common[:-1] + chr(ord(common[-1]) + 1)


def _token(entry: str) -> str:
    return base64.urlsafe_b64encode(entry.encode()).decode()


def _untoken(token: str) -> str:
    return base64.urlsafe_b64decode(token.encode()).decode()


class ListEndpoint:
    """Buckets, their keys, and counters of the requests served."""

    def __init__(self, latency_s: float = 0.0) -> None:
        #: Bucket -> ``SortedKeys``/``GeneratedKeys`` (binary search) or a plain list of
        #: ``(key, size)`` served in the order given.
        self.buckets: dict[str, Sequence[tuple[str, int]] | SortedKeys | GeneratedKeys] = {}
        self.denied: set[str] = set()
        #: Buckets that ignore ``start-after`` (some S3-compatible stores do).
        self.ignore_start_after: set[str] = set()
        self.latency_s = latency_s
        self.url = ""
        self.list_calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def reset_counters(self) -> None:
        with self._lock:
            self.list_calls = self.max_in_flight = 0

    # -- answering ---------------------------------------------------------------------

    def _entries(self, bucket: str, query: dict[str, str]) -> tuple[list[tuple[str, int]], bool]:
        """Up to max-keys ``(name, size)`` entries (size -1: a common prefix), truncated?"""
        keys = self.buckets[bucket]
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = int(query.get("max-keys", "1000"))
        token = query.get("continuation-token")
        after = "" if bucket in self.ignore_start_after else query.get("start-after", "")
        if isinstance(keys, (SortedKeys, GeneratedKeys)):
            resume = None
            if token:
                last = _untoken(token)
                # A token after a common prefix resumes past every key under it.
                is_common = bool(delimiter) and last.endswith(delimiter)
                resume, after = (_after_prefix(last), "") if is_common else (None, last)
            return self._sorted_entries(keys, prefix, delimiter, after, resume, max_keys)
        offset = 0
        if token:  # "#<offset>#<start-after of the first request>"
            offset_text, _, after = token[1:].partition("#")
            offset = int(offset_text)
        return self._unordered_entries(list(keys), prefix, delimiter, after, offset, max_keys)

    @staticmethod
    def _sorted_entries(
        keys: SortedKeys | GeneratedKeys,
        prefix: str,
        delimiter: str,
        after: str,
        resume: str | None,
        max_keys: int,
    ) -> tuple[list[tuple[str, int]], bool]:
        pos = bisect.bisect_left(keys, prefix)
        if after:
            pos = max(pos, bisect.bisect_right(keys, after))
        if resume is not None:
            pos = max(pos, bisect.bisect_left(keys, resume))
        entries: list[tuple[str, int]] = []
        n = len(keys)
        while pos < n:
            key = keys[pos]
            if not key.startswith(prefix):
                break
            if len(entries) == max_keys:
                return entries, True
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                entries.append((common, -1))
                pos = bisect.bisect_left(keys, _after_prefix(common), pos)
            else:
                entries.append((key, keys.size(pos)))
                pos += 1
        return entries, False

    @staticmethod
    def _unordered_entries(
        items: list[tuple[str, int]],
        prefix: str,
        delimiter: str,
        after: str,
        offset: int,
        max_keys: int,
    ) -> tuple[list[tuple[str, int]], bool]:
        """Entries in the order given; tokens are offsets into them (as the old fake had)."""
        entries: list[tuple[str, int]] = []
        seen: set[str] = set()
        for key, size in items:
            if not key.startswith(prefix) or (after and key <= after):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if common not in seen:
                    seen.add(common)
                    entries.append((common, -1))
                continue
            entries.append((key, size))
        return entries[offset : offset + max_keys], len(entries) > offset + max_keys

    def listing(self, bucket: str, query: dict[str, str]) -> bytes:
        """The ListObjectsV2 XML answer for one request."""
        entries, truncated = self._entries(bucket, query)
        if isinstance(self.buckets[bucket], (SortedKeys, GeneratedKeys)):
            next_token = _token(entries[-1][0]) if truncated else ""
        else:
            token = query.get("continuation-token")
            offset, after = 0, query.get("start-after", "")
            if token:
                offset_text, _, after = token[1:].partition("#")
                offset = int(offset_text)
            next_token = escape(f"#{offset + len(entries)}#{after}")
        url = query.get("encoding-type") == "url"

        def enc(text: str) -> str:
            if _PLAIN.fullmatch(text):
                return text  # nothing to quote or escape (most keys): skip the work
            return escape(urllib.parse.quote_plus(text, safe="/") if url else text)

        max_keys = query.get("max-keys", "1000")
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{escape(bucket)}</Name><Prefix>{enc(query.get('prefix', ''))}</Prefix>",
            f"<KeyCount>{len(entries)}</KeyCount><MaxKeys>{escape(max_keys)}</MaxKeys>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        if query.get("delimiter"):
            parts.append(f"<Delimiter>{enc(query['delimiter'])}</Delimiter>")
        if "start-after" in query:
            parts.append(f"<StartAfter>{enc(query['start-after'])}</StartAfter>")
        if truncated:
            parts.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        prefixes = []
        for name, size in entries:
            if size < 0:
                prefixes.append(f"<CommonPrefixes><Prefix>{enc(name)}</Prefix></CommonPrefixes>")
            else:
                parts.append(
                    f"<Contents><Key>{enc(name)}</Key>"
                    "<LastModified>2024-01-01T00:00:00.000Z</LastModified>"
                    f'<ETag>"e"</ETag><Size>{size}</Size>'
                    "<StorageClass>STANDARD</StorageClass></Contents>"
                )
        parts.extend(prefixes)
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()

    def answer(self, path: str) -> tuple[int, bytes]:
        """Status and body for a GET of ``path`` (after the latency)."""
        parsed = urllib.parse.urlsplit(path)
        bucket = urllib.parse.unquote(parsed.path.strip("/").split("/", 1)[0])
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s > 0:
                time.sleep(self.latency_s)
            if bucket in self.denied:
                return 403, _DENIED
            if bucket in self.buckets and query.get("list-type") == "2":
                with self._lock:
                    self.list_calls += 1
                return 200, self.listing(bucket, query)
            return 404, _NO_BUCKET
        finally:
            with self._lock:
                self.in_flight -= 1


def _handler(state: ListEndpoint) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            status, body = state.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients connect at once

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-answer (a cancelled request) is not the server's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextlib.contextmanager
def serve_list_endpoint(latency_s: float = 0.0) -> Iterator[ListEndpoint]:
    """Run a ``ListEndpoint`` on a free loopback port (a thread of this process)."""
    state = ListEndpoint(latency_s)
    server = _Server(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="list-endpoint", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def list_endpoint_process(
    bucket: str, layout: str, n: int, *, prefix: str = "", latency_s: float = 0.1
) -> Iterator[str]:
    """Run the endpoint in a child process serving ``GeneratedKeys.layout(layout, n, prefix)``
    in ``bucket``; yields its URL and stops it on exit."""
    cmd = [sys.executable, "-m", __name__, bucket, layout, str(n), "--prefix", prefix]
    cmd += ["--latency-ms", str(latency_s * 1000)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ}, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"list endpoint did not start (exit {proc.poll()})")
        yield url
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the child exits when its stdin closes
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mx8_common.testing.list_endpoint",
        description="Serve generated keys over ListObjectsV2 until stdin closes.",
    )
    parser.add_argument("bucket")
    parser.add_argument("layout", choices=["flat", "folders"])
    parser.add_argument("n", type=int)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    with serve_list_endpoint(args.latency_ms / 1000) as endpoint:
        endpoint.buckets[args.bucket] = GeneratedKeys.layout(args.layout, args.n, args.prefix)
        print(endpoint.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
