"""Prometheus metrics of one coordinator, in its own registry (tests run several at once).

The metrics port also serves the status page: ``/metrics`` (Prometheus text), ``/`` (HTML)
and ``/api/status`` (JSON), from ``http_handler``. The daemon base runs the HTTP server in
its own threads so a scrape never waits on the event loop; the status itself comes from
a provider callable that the coordinator makes thread-safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mx8_coordinator.web.status_page import render_status_html

__all__ = ["CoordinatorMetrics", "StatusProvider"]

#: Returns the ``/api/status`` dict; called from an HTTP thread.
StatusProvider = Callable[[], dict[str, Any]]


class CoordinatorMetrics:
    """Counters and gauges the job updates; ``http_handler`` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leases_issued = Counter("mx8_coordinator_leases_issued", "leases issued", registry=r)
        self.leases_expired = Counter(
            "mx8_coordinator_leases_expired", "leases that expired", registry=r
        )
        self.leases_requeued = Counter(
            "mx8_coordinator_leases_requeued", "lease remainders re-queued", registry=r
        )
        self.leases_completed = Counter(
            "mx8_coordinator_leases_completed", "leases completed", registry=r
        )
        self.samples_committed = Counter(
            "mx8_coordinator_samples_committed", "sample positions committed", registry=r
        )
        self.nodes_live = Gauge("mx8_coordinator_nodes_live", "nodes alive", registry=r)
        self.rpc_latency = Histogram(
            "mx8_coordinator_rpc_latency_seconds",
            "RPC handling time",
            ["method"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )

    def http_handler(self, status: StatusProvider | None = None) -> type[BaseHTTPRequestHandler]:
        """The handler of ``/metrics`` (and, with ``status``, ``/`` and ``/api/status``)."""
        return _handler_class(self.registry, status)


def _handler_class(
    registry: CollectorRegistry, status: StatusProvider | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mx8-coordinator"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path in ("/", "/index.html", "/api/status") and status is not None:
                try:
                    current = status()
                except Exception as exc:  # the loop is busy or shutting down
                    body = f"status unavailable: {exc!r}; retry in a moment\n"
                    self._send(503, "text/plain; charset=utf-8", body.encode())
                    return
                if path == "/api/status":
                    body = json.dumps(current, indent=1).encode()
                    self._send(200, "application/json", body)
                else:
                    body = render_status_html(current).encode()
                    self._send(200, "text/html; charset=utf-8", body)
            else:
                known = "/metrics, / and /api/status" if status is not None else "/metrics"
                self._send(404, "text/plain; charset=utf-8", f"not found; try {known}\n".encode())

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Scrapes and page reloads every few seconds would flood the daemon's log.
            pass

    return Handler
