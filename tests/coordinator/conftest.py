"""Fixtures of the coordinator tests: real manifest files and real servers on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from coordinator_helpers import write_manifest

from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.manifest_serving import FileManifestSource
from mx8_coordinator.server import Coordinator


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m", 1000)


@pytest.fixture
async def start_coordinator(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[Coordinator]]]:
    """Factory: ``await start_coordinator(manifest_path, **config)`` -> a started Coordinator."""
    started: list[Coordinator] = []

    async def start(path: Path, **overrides: Any) -> Coordinator:
        values: dict[str, Any] = {
            "dataset": str(path),
            "listen": "127.0.0.1:0",
            "lease_ttl_ms": 5000,
            "heartbeat_interval_ms": 100,
        }
        values.update(overrides)
        source = await FileManifestSource.open(path)
        coordinator = Coordinator(CoordinatorConfig(**values), source=source)
        started.append(coordinator)
        await coordinator.start()
        return coordinator

    yield start
    for coordinator in started:
        await coordinator.shutdown()
