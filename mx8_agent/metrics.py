"""Prometheus metrics of one agent, in its own registry (tests run several agents at once).

Counters and gauges are read from the agent's live stats at scrape time (one callable
returns them), so the hot path only bumps plain ints; the fetch latency histogram is
observed per sample by the object reader's ``on_read`` hook (``AgentMetrics.observe_read``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

__all__ = ["COUNTERS", "GAUGES", "AgentMetrics"]

#: Monotonic totals in the stats snapshot: name -> help.
COUNTERS = {
    "bytes_fetched": "sample bytes read from storage",
    "samples_fetched": "samples read from storage",
    "samples_acked": "samples trainers acknowledged (the only ones reported as progress)",
    "fetch_retries": "storage reads retried (throttling, resets, short bodies)",
    "local_read_batches": "thread-pool jobs that read several local files at once",
    "batches_sent": "batches sent to trainers",
    "batches_requeued": "unacknowledged batches re-queued after a trainer left",
    "batches_shared": "batches handed to trainers through shared memory (/dev/shm)",
    "batches_trainer_read": "batches of local files sent as paths: their trainer read them",
    "leases_started": "leases this agent started",
    "progress_reports": "progress reports the coordinator accepted (dynamic mode)",
}

#: Current values in the stats snapshot: name -> help.
GAUGES = {
    "inflight_bytes": "sample bytes held: fetching + buffered + queued + unacknowledged",
    "queued_batches": "ready batches waiting for a trainer",
    "unacked_batches": "batches sent and not yet acknowledged",
    "running_reads": "storage reads in progress",
    "leases_held": "leases held now",
    "trainers": "connected trainer streams",
    "shared_memory_trainers": "connected trainer streams that take batches through shared memory",
    "bytes_per_second": "bytes fetched per second since the first lease",
    "samples_per_second": "samples acknowledged per second since the first lease",
}


class _StatsCollector(Collector):
    def __init__(self, snapshot: Callable[[], Mapping[str, float]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        stats = self._snapshot()
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"mx8_agent_{name}", doc, value=stats.get(name, 0))
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(f"mx8_agent_{name}", doc, value=stats.get(name, 0))


class AgentMetrics:
    """The agent's registry; ``http_handler`` exposes it over HTTP."""

    def __init__(self, snapshot: Callable[[], Mapping[str, float]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(snapshot))
        self.fetch_latency = Histogram(
            "mx8_agent_fetch_latency_seconds",
            "time to read one sample from storage (retries included)",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )

    def observe_read(self, seconds: float, nbytes: int) -> None:
        """The object reader's ``on_read`` hook: one sample read took ``seconds``."""
        self.fetch_latency.observe(seconds)

    def http_handler(self) -> type[BaseHTTPRequestHandler]:
        """The handler of ``/metrics`` over this registry."""
        return MetricsHandler.factory(self.registry)  # type: ignore[no-any-return]
