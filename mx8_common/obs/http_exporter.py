"""The daemons' HTTP endpoint (``/metrics``, the status page): one server on one thread.

Both daemons serve their Prometheus registry (the coordinator also its status page) from a
``ThreadingHTTPServer`` on a daemon thread, started once and stopped on shutdown.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HttpExporter"]


class _Ipv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # "::" serves IPv4 clients too (dual stack) where the host allows it.
        if self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _server_class(host: str) -> type[ThreadingHTTPServer]:
    """An IPv6 server for IPv6 hosts (``::``, ``::1``), the IPv4 one otherwise."""
    return _Ipv6Server if ":" in host else ThreadingHTTPServer


class HttpExporter:
    """Serves ``handler`` on ``host:port`` from a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> int:
        """Bind (port 0 picks a free one) and serve; returns the bound port."""
        if self._server is not None:
            raise RuntimeError(f"{self._name} already serves on port {self._server.server_port}")
        server = _server_class(host)((host, port), handler)
        server.daemon_threads = True  # a slow scraper never holds shutdown up
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=self._name, daemon=True)
        self._thread.start()
        return int(server.server_port)

    def stop(self) -> None:
        """Stop serving if it runs. Safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
