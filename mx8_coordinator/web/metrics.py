"""Prometheus metrics of one coordinator, in its own registry (tests run several at once).

The counters and the live-node gauge are read from the job's ``JobStatus`` at scrape time
(a collector), so they can never disagree with ``GetJobSnapshot`` or the status page; only
the RPC latency histogram is observed as calls happen.

The metrics port also serves the status page: ``/metrics`` (Prometheus text), ``/`` (HTML)
and ``/api/status`` (JSON), from ``http_handler``. The daemon base runs the HTTP server in
its own threads so a scrape never waits on the event loop; the status itself comes from
a provider callable that the coordinator makes thread-safe.

With an auth token (the coordinator's ``MX8_AUTH_TOKEN``), ``/`` and ``/api/status`` (the
dataset link, the manifest hash, who holds what) answer 401 unless the request carries
``Authorization: Bearer <token>``; ``/metrics`` (counts only) stays open for scrapers.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mx8_common.rpc.job_status import JobCounters, JobStatus
from mx8_coordinator.web.status_page import render_status_html

__all__ = ["COUNTERS", "CoordinatorMetrics", "StatusProvider"]

#: Returns the job's status; called from an HTTP thread.
StatusProvider = Callable[[], JobStatus]

#: ``JobCounters`` field -> help of its ``mx8_coordinator_<field>_total`` counter.
COUNTERS = {
    "leases_issued": "leases issued",
    "leases_expired": "leases that expired",
    "leases_requeued": "lease remainders re-queued",
    "leases_completed": "leases completed",
    "samples_committed": "sample positions committed",
}


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class _JobStatusCollector(Collector):
    def __init__(self, status: StatusProvider | None) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        # No provider: an exporter without a job, which has counted nothing.
        status = self._status() if self._status is not None else None
        counters = asdict(status.counters if status is not None else JobCounters())
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"mx8_coordinator_{name}", doc, value=counters[name])
        live = status.nodes_live if status is not None else 0
        yield GaugeMetricFamily("mx8_coordinator_nodes_live", "nodes alive", value=live)
        # Finished (left after the drain) apart from lost (went silent): only lost pages anyone.
        nodes = GaugeMetricFamily(
            "mx8_coordinator_nodes",
            "known nodes by state (alive, finished, lost)",
            labels=["state"],
        )
        for state in ("alive", "finished", "lost"):
            nodes.add_metric([state], status.nodes_in(state) if status is not None else 0)
        yield nodes
        rate = status.samples_per_second if status is not None else 0.0
        yield GaugeMetricFamily(
            "mx8_coordinator_samples_per_second",
            "committed samples/s: recent window while running, the final average once drained",
            value=rate,
        )


class CoordinatorMetrics:
    """The coordinator's registry; ``http_handler`` exposes it (and the status page)."""

    def __init__(self, status: StatusProvider | None = None) -> None:
        self.registry = CollectorRegistry()
        self._status = status
        self.registry.register(_JobStatusCollector(status))
        self.rpc_latency = Histogram(
            "mx8_coordinator_rpc_latency_seconds",
            "RPC handling time",
            ["method"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        # Every lease and progress answer waits for the lease log's sync: a disk (or a
        # store) that stalls shows here before it shows in rpc_latency's tail.
        self.lease_log_sync = Histogram(
            "mx8_coordinator_lease_log_sync_seconds",
            "lease log write + sync time: a local log's fdatasync, a store log's segment "
            "write (lease and progress answers wait for it)",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        # The lease log in a store (``--state-dir s3://...``): leadership and segments.
        self.leader_term = Gauge(
            "mx8_coordinator_leader_term",
            "term this coordinator leads (0: standby, or the log is not in a store)",
            registry=self.registry,
        )
        self.term_changes = Counter(
            "mx8_coordinator_term_changes",
            "terms this coordinator took (its first start of the job, or a takeover)",
            registry=self.registry,
        )
        self.takeover_seconds = Gauge(
            "mx8_coordinator_takeover_seconds",
            "last term taken: from creating the term to serving (replay, first segment)",
            registry=self.registry,
        )
        self.leader_suspended = Gauge(
            "mx8_coordinator_leader_suspended",
            "1 while the leader cannot renew its record in time and hands out no lease",
            registry=self.registry,
        )
        self.segments_written = Counter(
            "mx8_coordinator_log_segments_written",
            "lease log segments written to the store",
            registry=self.registry,
        )

    def http_handler(self, *, auth_token: str | None = None) -> type[BaseHTTPRequestHandler]:
        """The handler of ``/metrics`` (and, with a status provider, ``/`` and
        ``/api/status``, behind ``auth_token`` when one is given); the daemon base serves
        it from its HTTP exporter."""
        return _handler_class(self.registry, self._status, auth_token)


def _handler_class(
    registry: CollectorRegistry, status: StatusProvider | None, auth_token: str | None = None
) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {auth_token}".encode() if auth_token else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "mx8-coordinator"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body = generate_latest(registry)
                except Exception as exc:  # the status provider: loop busy or shutting down
                    self._unavailable(exc)
                    return
                self._send(200, CONTENT_TYPE_LATEST, body)
            elif path in ("/", "/index.html", "/api/status") and status is not None:
                if not self._authorized():
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="mx8"')
                    body = b"the status needs Authorization: Bearer <MX8_AUTH_TOKEN>\n"
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                try:
                    current = status()
                except Exception as exc:  # the loop is busy or shutting down
                    self._unavailable(exc)
                    return
                if path == "/api/status":
                    body = json.dumps(current.to_dict(), indent=1).encode()
                    self._send(200, "application/json", body)
                else:
                    body = render_status_html(current).encode()
                    self._send(200, "text/html; charset=utf-8", body)
            else:
                known = "/metrics, / and /api/status" if status is not None else "/metrics"
                self._send(404, "text/plain; charset=utf-8", f"not found; try {known}\n".encode())

        def _authorized(self) -> bool:
            if expected is None:
                return True
            given = (self.headers.get("Authorization") or "").encode()
            return hmac.compare_digest(given, expected)

        def _unavailable(self, exc: Exception) -> None:
            body = f"status unavailable: {exc!r}; retry in a moment\n"
            self._send(503, "text/plain; charset=utf-8", body.encode())

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
