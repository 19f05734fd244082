"""Fixtures of the operator-surface tests: real coordinators on port 0 over manifest files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ops_helpers import Pki, make_pki, write_manifest

from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.manifest_serving import FileManifestSource
from mx8_coordinator.server import Coordinator


@pytest.fixture(autouse=True)
def _no_ambient_security(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients read MX8_TLS_* / MX8_AUTH_TOKEN: start every test from a clean environment."""
    for name in ("MX8_AUTH_TOKEN", "MX8_TLS_CERT", "MX8_TLS_KEY", "MX8_TLS_CA"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m", 600)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def start_coordinator(
    manifest_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[Coordinator]]]:
    """Factory: ``await start_coordinator(**config)`` -> a started Coordinator (stopped after)."""
    started: list[Coordinator] = []

    async def start(**overrides: Any) -> Coordinator:
        values: dict[str, Any] = {
            "dataset": str(manifest_path),
            "listen": "127.0.0.1:0",
            "lease_ttl_ms": 5000,
            "heartbeat_interval_ms": 100,
        }
        values.update(overrides)
        source = await FileManifestSource.open(manifest_path)
        coordinator = Coordinator(CoordinatorConfig(**values), source=source)
        started.append(coordinator)
        await coordinator.start()
        return coordinator

    yield start
    for coordinator in started:
        await coordinator.shutdown()
