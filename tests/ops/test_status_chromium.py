"""The status page in headless Chromium, loaded while a job runs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from support.coordinator import Ledger, run_node
from support.eventually import assert_eventually
from support.ops import drive_partial_job

from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_coordinator.server import Coordinator

StartCoordinator = Callable[..., Awaitable[Coordinator]]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (apt-get install chromium; scripts/bootstrap.sh "
    "does it as root unless MX8_INSTALL_CHROMIUM=0)",
)


async def chromium_dom(url: str, profile: Path) -> str:
    """The DOM Chromium builds for ``url`` (after scripts ran), via ``--dump-dom``."""
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Not blocking the loop matters: the coordinator answering the page runs on it.
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_status_chromium_shows_node_rows_and_progress(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    coord = await start_coordinator(
        metrics="127.0.0.1:0", world_size=2, block_size=50, epochs=2, lease_ttl_ms=120000
    )
    await drive_partial_job(coord.address)
    dom = await chromium_dom(f"http://127.0.0.1:{coord.metrics_port}/", tmp_path / "profile")
    assert "<title>mx8 job default</title>" in dom
    assert 'class="node" data-node-id="node-a"' in dom
    assert 'class="node" data-node-id="node-b"' in dom
    assert coord.source.manifest_hash in dom
    assert 'class="epoch" data-epoch="0"' in dom and "75 / 600" in dom
    assert 'class="epoch" data-epoch="1"' in dom and "0 / 600" in dom
    assert "Live leases (1)" in dom


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


async def read(url: str) -> str:
    return await asyncio.to_thread(_read, url)


async def test_status_chromium_after_the_job_finished_and_agents_exited(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    """Two nodes finish the job and exit, a third crashed mid-job: the page, /api/status
    and /metrics agree that two finished, one is lost and none is live, and the rate
    is the run's final average, no longer falling."""
    coord = await start_coordinator(
        metrics="127.0.0.1:0", world_size=3, block_size=50, lease_ttl_ms=1500
    )
    assert coord.source is not None
    base = f"http://127.0.0.1:{coord.metrics_port}"
    async with CoordinatorClient(coord.address, token="") as client:
        for node in ("node-a", "node-b", "node-c"):
            await client.register_node("default", node, hostname=f"host-{node[-1]}")
        await client.heartbeat("default", "node-a", bytes_fetched=3 * 2**20)
        await client.request_lease("default", "node-c", 1)  # and crashes holding it
        ledger = Ledger(600, 50, False, 0, coord.source.manifest_hash)
        await asyncio.gather(
            run_node(client, "default", "node-a", ledger),
            run_node(client, "default", "node-b", ledger),
        )
    ledger.assert_exactly_once(1)

    async def all_gone() -> dict | None:
        status = json.loads(await read(f"{base}/api/status"))
        return status if not any(n["alive"] for n in status["nodes"]) else None

    status = await assert_eventually(all_gone, timeout_s=30)
    metrics = await read(f"{base}/metrics")
    assert "mx8_coordinator_nodes_live 0.0" in metrics
    assert 'mx8_coordinator_nodes{state="finished"} 2.0' in metrics
    assert 'mx8_coordinator_nodes{state="lost"} 1.0' in metrics
    assert {n["node_id"]: n["state"] for n in status["nodes"]} == {
        "node-a": "finished",
        "node-b": "finished",
        "node-c": "lost",
    }
    assert status["rate_basis"] == "final" and status["samples_per_second"] > 0

    dom = await chromium_dom(f"{base}/", tmp_path / "profile")
    states = dict(re.findall(r'data-node-id="([^"]+)".*?data-state="(\w+)"', dom))
    assert states == {"node-a": "finished", "node-b": "finished", "node-c": "lost"}
    assert "departed" not in dom
    assert 'id="legend"' in dom and "trails committed" in dom
    assert "3.0 MiB" in dom
    assert 'id="throughput-chart"' in dom
    assert "(average of the whole run, final)" in dom
    rate = f"{status['samples_per_second']:,.1f} samples/s"
    assert rate in dom  # frozen: the page drawn later shows the same number
