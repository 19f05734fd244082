"""The status page in headless Chromium, loaded while a job runs."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from support.ops import drive_partial_job

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
