"""A tiny S3-protocol endpoint on 127.0.0.1 that answers ListObjectsV2 from a fixed key list.

It serves keys in exactly the order given (so a test can serve an out-of-order listing,
as some S3-compatible stores do), pages by ``max-keys`` with continuation tokens, honours
``prefix`` and ``delimiter``, and answers ``403 AccessDenied`` for buckets marked denied.
Only listing is implemented: resolvers index from listings alone.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from xml.sax.saxutils import escape

__all__ = ["FakeListEndpoint", "fake_list_endpoint"]

_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


class FakeListEndpoint:
    """Buckets -> ordered ``(key, size)`` lists, plus buckets that deny access."""

    def __init__(self) -> None:
        self.buckets: dict[str, list[tuple[str, int]]] = {}
        self.denied: set[str] = set()
        self.url = ""
        self.list_calls = 0

    def listing(self, bucket: str, query: dict[str, str]) -> bytes:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = int(query.get("max-keys", "1000"))
        start = int(query.get("continuation-token", "0") or "0")
        entries: list[tuple[str, str, int]] = []  # (kind, key or prefix, size)
        seen_prefixes: set[str] = set()
        for key, size in self.buckets[bucket]:
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common not in seen_prefixes:
                    seen_prefixes.add(common)
                    entries.append(("prefix", common, 0))
                continue
            entries.append(("key", key, size))
        page = entries[start : start + max_keys]
        truncated = start + max_keys < len(entries)
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
            f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if truncated:
            parts.append(f"<NextContinuationToken>{start + max_keys}</NextContinuationToken>")
        for kind, name, size in page:
            if kind == "key":
                parts.append(
                    f"<Contents><Key>{escape(name)}</Key>"
                    "<LastModified>2024-01-01T00:00:00.000Z</LastModified>"
                    f'<ETag>"e"</ETag><Size>{size}</Size>'
                    "<StorageClass>STANDARD</StorageClass></Contents>"
                )
            else:
                parts.append(f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()


def _handler(state: FakeListEndpoint) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            bucket = urllib.parse.unquote(parsed.path.strip("/").split("/", 1)[0])
            query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
            if bucket in state.denied:
                self._send(403, _DENIED)
            elif bucket in state.buckets and query.get("list-type") == "2":
                state.list_calls += 1
                self._send(200, state.listing(bucket, query))
            else:
                body = (
                    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchBucket</Code>'
                    b"<Message>The specified bucket does not exist</Message></Error>"
                )
                self._send(404, body)

    return Handler


@contextlib.contextmanager
def fake_list_endpoint() -> Iterator[FakeListEndpoint]:
    """Run a ``FakeListEndpoint`` on a free loopback port for the block."""
    state = FakeListEndpoint()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
