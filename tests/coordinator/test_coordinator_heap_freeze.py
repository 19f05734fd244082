"""The coordinator's start-up heap is frozen for the GC when the daemon owns its process.

Full collections while serving would otherwise walk every object start-up made (gRPC,
protobuf, the job's tables): a pause of every RPC in flight. The daemon freezes the heap
just before turning SERVING; an in-process ``Coordinator`` leaves the GC alone.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agent import DaemonProcess
from support.logs import Events

from mx8_common.testing.local_s3 import free_port
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import FileManifestSource
from mx8_coordinator.server import Coordinator


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Start and end with nothing frozen, so the test leaves the process as it found it."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def _config(path: Path) -> CoordinatorConfig:
    return CoordinatorConfig(dataset=str(path), listen="127.0.0.1:0", mode="dynamic")


async def test_coordinator_freeze_heap_freezes_before_serving(
    manifest_path: Path, logs: Events, unfrozen: None
) -> None:
    source = await FileManifestSource.open(manifest_path)
    async with Coordinator(_config(manifest_path), source=source, freeze_heap=True):
        frozen = gc.get_freeze_count()
    names = logs.names()
    assert names.index("heap_frozen") < names.index("coordinator_serving")
    # Everything alive at start-up: the interpreter, grpc and protobuf modules at least.
    assert frozen > 10_000
    # Frozen objects that die leave the permanent generation: the count only shrinks.
    assert logs.named("heap_frozen")[0]["objects"] >= frozen


async def test_coordinator_in_process_leaves_the_gc_alone(
    manifest_path: Path, logs: Events, unfrozen: None
) -> None:
    source = await FileManifestSource.open(manifest_path)
    async with Coordinator(_config(manifest_path), source=source):
        assert gc.get_freeze_count() == 0
    assert "heap_frozen" not in logs.names()


async def test_mx8_coordinator_process_freezes_its_startup_heap(
    manifest_path: Path, tmp_path: Path
) -> None:
    args = ["--dataset", str(manifest_path), "--listen", f"127.0.0.1:{free_port()}"]
    proc = DaemonProcess("mx8_coordinator", args, tmp_path / "coordinator.log")
    try:
        await proc.wait_event("coordinator_serving")
        frozen = proc.event("heap_frozen")
        assert frozen is not None and frozen["objects"] > 10_000, proc.text()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0, proc.text()
    finally:
        proc.stop()
