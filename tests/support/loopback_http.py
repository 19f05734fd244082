"""Small pieces of the real HTTP servers tests run on 127.0.0.1 in front of an emulator
(``s3_fault_proxy``, ``gcs_front``): serving a handler on a thread, forwarding a request
upstream, and answering."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
from collections.abc import Iterator

__all__ = ["HOP_HEADERS", "answer", "forward", "serve_http"]

#: Headers that belong to one connection, never forwarded.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


@contextlib.contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler], name: str) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port for the block; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def forward(
    request: http.server.BaseHTTPRequestHandler, host: str, port: int, path: str | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send ``request`` (its method, headers and body; ``path`` or its own) to ``host:port``
    and read the whole answer: ``(status, headers, body)``."""
    length = int(request.headers.get("Content-Length") or 0)
    body = request.rfile.read(length) if length else None
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest(
            request.command, path or request.path, skip_host=True, skip_accept_encoding=True
        )
        for name, value in request.headers.items():
            if name.lower() not in HOP_HEADERS:
                conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def answer(
    request: http.server.BaseHTTPRequestHandler,
    status: int,
    headers: list[tuple[str, str]],
    data: bytes,
    *,
    cut: int | None = None,
) -> None:
    """Send ``status``, ``headers`` (hop and length headers dropped) and ``data``'s length;
    then ``data``, or only its first ``cut`` bytes (a short body)."""
    request.send_response(status)
    for name, value in headers:
        if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
            request.send_header(name, value)
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data if cut is None else data[:cut])
