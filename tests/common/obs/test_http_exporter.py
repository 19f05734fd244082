"""HttpExporter: the daemons' /metrics + status server on a thread, started and stopped."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest

from mx8_common.obs.http_exporter import HttpExporter


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_http_exporter_serves_on_a_named_thread_and_stops_twice_safely() -> None:
    exporter = HttpExporter("mx8-test-http")
    port = exporter.start("127.0.0.1", 0, _Hello)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.read() == b"hello /metrics"
    assert any(t.name == "mx8-test-http" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="already serves"):
        exporter.start("127.0.0.1", 0, _Hello)
    exporter.stop()
    exporter.stop()
    assert not any(t.name == "mx8-test-http" for t in threading.enumerate())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
