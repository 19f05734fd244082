"""A real HTTP proxy on 127.0.0.1 in front of the S3-protocol test server, injecting faults.

Tests point an S3 client at the proxy instead of the server. Every request is forwarded
unchanged (Host header included, so SigV4 signatures still verify) unless a queued fault
for a key matches the request path; each fault fires once, in the order queued:

* ``"slowdown"``: answer ``503 SlowDown`` like throttled S3;
* ``"denied"``: answer ``403 AccessDenied`` like a bucket policy that refuses;
* ``"reset"``: close the connection without answering;
* ``"short"``: forward, then send the full Content-Length header but only half the body;
* ``Gate`` (a ``threading.Event``): hold the request until the test sets the event.

With ``home_region``, the proxy also plays a bucket that lives in that region, as S3 does:
a request signed for another region (its SigV4 credential scope) gets ``301
PermanentRedirect`` with ``x-amz-bucket-region``, and an unsigned ``HEAD /bucket`` gets that
header too (unless ``tell_region`` is False), naming ``told_region`` when set (a region
that is not the bucket's, so followed requests are refused again).
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from support.loopback_http import answer, forward, serve_http

__all__ = ["FaultProxy", "fault_proxy"]

_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


_MOVED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code>'
    b"<Message>The bucket you are attempting to access must be addressed using the specified "
    b"endpoint. Please send all future requests to this endpoint.</Message></Error>"
)
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/(?P<region>[^/]+)/s3/aws4_request")


class FaultProxy:
    """State shared by the proxy's handler threads."""

    home_region: str | None = None
    tell_region: bool = True
    told_region: str | None = None
    redirects = 0
    region_asks = 0

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.url = ""
        self._lock = threading.Lock()
        self._faults: dict[str, list[Any]] = defaultdict(list)
        self.gets: Counter[str] = Counter()  # GET requests seen per path
        self.faults_fired: Counter[str] = Counter()

    def add_faults(self, key: str, *faults: Any) -> None:
        """Queue faults for GETs whose path (query left out) ends with ``/key``."""
        with self._lock:
            self._faults[key].extend(faults)

    def take_fault(self, path: str) -> Any:
        path = path.partition("?")[0]  # GCS media GETs end in ?alt=media
        with self._lock:
            self.gets[path] += 1
            for key, queue in self._faults.items():
                if queue and path.endswith("/" + key):
                    fault = queue.pop(0)
                    self.faults_fired[str(fault) if isinstance(fault, str) else "gate"] += 1
                    return fault
        return None

    def gets_for(self, key: str) -> int:
        with self._lock:
            return sum(n for path, n in self.gets.items() if path.endswith("/" + key))


def _handler(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
            return forward(self, proxy.upstream_host, proxy.upstream_port)

        def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            answer(self, status, headers, data)

        def _moved(self) -> bool:
            """As S3 answers for a bucket in ``home_region``; True when answered here."""
            home = proxy.home_region
            if home is None:
                return False
            named = proxy.told_region or home
            tell = [("x-amz-bucket-region", named)] if proxy.tell_region else []
            scope = _SCOPE.search(self.headers.get("Authorization") or "")
            if scope is None:
                if self.command == "HEAD":
                    proxy.region_asks += 1
                    status, headers, _ = self._forward()
                    # The upstream's own region header (moto's) is not the bucket's here.
                    kept = [h for h in headers if h[0].lower() != "x-amz-bucket-region"]
                    answer(self, status, kept + tell, b"")
                    return True
                return False
            if scope["region"] == home:
                return False
            proxy.redirects += 1
            self._send(301, [("Content-Type", "application/xml"), *tell], _MOVED)
            return True

        def _handle(self) -> None:
            if self._moved():
                return
            fault = proxy.take_fault(self.path) if self.command == "GET" else None
            if isinstance(fault, threading.Event):
                fault.wait(30)
                fault = None
            if fault == "reset":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            if fault == "slowdown":
                self._send(503, [("Content-Type", "application/xml")], _SLOWDOWN)
                return
            if fault == "denied":
                self._send(403, [("Content-Type", "application/xml")], _DENIED)
                return
            status, headers, data = self._forward()
            if fault == "short":
                answer(self, status, headers, data, cut=len(data) // 2)
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            self._send(status, headers, data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    return Handler


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """Run a ``FaultProxy`` in front of ``upstream`` for the duration of the block."""
    proxy = FaultProxy(upstream)
    with serve_http(_handler(proxy), "s3-fault-proxy") as url:
        proxy.url = url
        yield proxy
