"""The status page on the coordinator's metrics port: /api/status JSON, / HTML, /metrics."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.eventually import assert_eventually
from support.ops import drive_partial_job

from mx8_common.obs.http_exporter import HttpExporter
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.rpc.job_status import JobStatus, NodeStatus
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import FileManifestSource, ManifestSource
from mx8_coordinator.server import Coordinator
from mx8_coordinator.web.metrics import COUNTERS, CoordinatorMetrics
from mx8_coordinator.web.status_page import render_status_html

StartCoordinator = Callable[..., Awaitable[Coordinator]]


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def get(url: str) -> tuple[int, str, bytes]:
    # Off the loop: the server builds the status on this very loop.
    return await asyncio.to_thread(_get, url)


async def _running(start_coordinator: StartCoordinator) -> Coordinator:
    coord = await start_coordinator(
        metrics="127.0.0.1:0", world_size=2, block_size=50, epochs=2, lease_ttl_ms=60000
    )
    await drive_partial_job(coord.address)
    return coord


async def test_status_page_api_status_reports_a_running_job(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await _running(start_coordinator)
    code, ctype, body = await get(f"http://127.0.0.1:{coord.metrics_port}/api/status")
    assert code == 200 and ctype == "application/json"
    status = json.loads(body)
    assert status["state"] == "running"
    assert status["job_id"] == "default"
    assert status["manifest_hash"] == coord.source.manifest_hash
    assert status["total_samples"] == 600 and status["epochs"] == 2
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert set(nodes) == {"node-a", "node-b"}
    assert nodes["node-a"]["rank"] == 0 and nodes["node-b"]["rank"] == 1
    assert nodes["node-a"]["samples_committed"] == 50
    assert nodes["node-b"]["samples_committed"] == 25
    assert nodes["node-a"]["samples_delivered"] == 40
    assert nodes["node-b"]["bytes_fetched"] == 2500
    assert all(n["alive"] and 0 <= n["last_heartbeat_age_ms"] < 60000 for n in nodes.values())
    assert status["progress"][0]["committed_samples"] == 75
    assert status["progress"][1]["committed_samples"] == 0
    assert status["progress"][0]["fraction"] == pytest.approx(75 / 600)
    leases = status["live_leases"]
    assert [(le["node_id"], le["cursor"] - le["start"]) for le in leases] == [("node-b", 25)]
    assert 0 < leases[0]["expires_in_ms"] <= 60000
    assert status["counters"]["leases_completed"] == 1
    assert status["counters"]["samples_committed"] == 75
    assert status["samples_per_second"] > 0


async def test_status_page_html_draws_nodes_progress_and_leases(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await _running(start_coordinator)
    code, ctype, body = await get(f"http://127.0.0.1:{coord.metrics_port}/")
    assert code == 200 and ctype.startswith("text/html")
    page = body.decode()
    assert '<meta http-equiv="refresh"' in page
    assert coord.source.manifest_hash in page
    assert 'data-node-id="node-a"' in page and 'data-node-id="node-b"' in page
    assert "host-a" in page
    assert "75 / 600" in page and "12.5%" in page
    assert "Live leases (1)" in page


async def test_status_page_metrics_stay_prometheus_and_unknown_paths_404(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await _running(start_coordinator)
    code, ctype, body = await get(f"http://127.0.0.1:{coord.metrics_port}/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert b"mx8_coordinator_samples_committed_total 75.0" in body
    code, _, body = await get(f"http://127.0.0.1:{coord.metrics_port}/nope")
    assert code == 404 and b"/api/status" in body


async def test_status_page_shows_resolving_before_the_snapshot(
    manifest_path: Path,
) -> None:
    release = asyncio.Event()

    async def slow_source() -> ManifestSource:
        await release.wait()
        return await FileManifestSource.open(manifest_path)

    config = CoordinatorConfig(
        dataset=str(manifest_path), listen="127.0.0.1:0", metrics="127.0.0.1:0"
    )
    coord = Coordinator(config, source=slow_source)
    starting = asyncio.create_task(coord.start())
    try:
        await assert_eventually(lambda: coord.metrics_port is not None)
        _, _, body = await get(f"http://127.0.0.1:{coord.metrics_port}/api/status")
        assert json.loads(body)["state"] == "resolving"
        _, _, page = await get(f"http://127.0.0.1:{coord.metrics_port}/")
        assert b"resolving the dataset snapshot" in page
        release.set()
        await starting
        _, _, body = await get(f"http://127.0.0.1:{coord.metrics_port}/api/status")
        assert json.loads(body)["state"] == "waiting_for_nodes"
    finally:
        release.set()
        await coord.shutdown()


def test_status_page_escapes_names() -> None:
    node = NodeStatus(
        node_id="<script>alert(1)</script>",
        hostname="h&h",
        alive=False,
        last_heartbeat_unix_ms=10_000,
    )
    status = JobStatus(job_id="<job>", dataset_link="s3://b/<x>", nodes=(node,))
    page = render_status_html(status, now_unix_ms=11_500)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "h&amp;h" in page
    assert "lost (silent past the lease TTL)" in page and "1.5 s ago" in page


def _metric_values(body: bytes) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if not sample.labels
    }


async def test_status_page_metrics_snapshot_and_api_status_tell_one_story(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    """The counters are read from the job's status at scrape time, so they agree with
    ``GetJobSnapshot`` and ``/api/status``, also after a restart replayed the lease log."""
    state_dir = str(tmp_path / "state")
    first = await start_coordinator(
        metrics="127.0.0.1:0", world_size=2, block_size=50, epochs=2, state_dir=state_dir
    )
    await drive_partial_job(first.address)
    await first.shutdown()
    coord = await start_coordinator(
        metrics="127.0.0.1:0", world_size=2, block_size=50, epochs=2, state_dir=state_dir
    )
    async with CoordinatorClient(coord.address) as client:
        await client.register_node("default", "node-a")
        snap = await client.get_job_snapshot()
    _, _, metrics = await get(f"http://127.0.0.1:{coord.metrics_port}/metrics")
    _, _, api = await get(f"http://127.0.0.1:{coord.metrics_port}/api/status")
    scraped, status = _metric_values(metrics), json.loads(api)
    assert snap.counters.samples_committed == 75  # restored from the lease log
    for name in COUNTERS:
        from_snapshot = getattr(snap.counters, name)
        assert scraped[f"mx8_coordinator_{name}_total"] == from_snapshot, name
        assert status["counters"][name] == from_snapshot, name
    assert scraped["mx8_coordinator_nodes_live"] == sum(n.alive for n in snap.nodes) > 0


async def test_status_page_answers_503_while_the_status_is_unavailable() -> None:
    def busy() -> JobStatus:
        raise TimeoutError("the event loop did not answer")

    # Served the way the daemon base serves it: its handler on an HttpExporter.
    exporter = HttpExporter("mx8-test-http")
    port = exporter.start("127.0.0.1", 0, CoordinatorMetrics(busy).http_handler())
    try:
        for path in ("/metrics", "/api/status", "/"):
            code, _, body = await get(f"http://127.0.0.1:{port}{path}")
            assert code == 503 and b"status unavailable" in body, path
    finally:
        await asyncio.to_thread(exporter.stop)


async def test_status_page_shows_the_storage_retries_agents_report(
    start_coordinator: StartCoordinator,
) -> None:
    coord = await _running(start_coordinator)
    async with CoordinatorClient(coord.address, token="") as client:
        await client.heartbeat("default", "node-b", bytes_fetched=2**30, fetch_retries=4)
    _, _, body = await get(f"http://127.0.0.1:{coord.metrics_port}/api/status")
    nodes = {n["node_id"]: n for n in json.loads(body)["nodes"]}
    assert nodes["node-b"]["fetch_retries"] == 4 and nodes["node-a"]["fetch_retries"] == 0
    _, _, page = await get(f"http://127.0.0.1:{coord.metrics_port}/")
    assert b'data-key="storage reads retried">4<' in page and b"1.0 GiB" in page
