"""Prometheus metrics of one coordinator, in its own registry (tests run several at once)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["CoordinatorMetrics"]


class CoordinatorMetrics:
    """Counters and gauges the job updates; ``serve`` exposes them over HTTP."""

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
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter (a daemon thread); returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        """Stop the exporter if it runs. Safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
