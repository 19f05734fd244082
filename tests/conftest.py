"""Fixtures shared by every test package: a real S3-protocol server on loopback, a real
coordinator factory, and the structlog capture (``logs``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.cloud_emulators import (
    Azurite,
    EmulatorUnavailable,
    GcsEmulator,
    azurite,
    gcs_emulator,
)
from support.logs import Events

from mx8_common.obs.events import configure_logging
from mx8_common.storage.s3_client import S3Settings, sync_s3_client
from mx8_common.testing.list_endpoint import ListEndpoint, serve_list_endpoint
from mx8_common.testing.local_s3 import LocalS3, local_s3_server
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import FileManifestSource
from mx8_coordinator.server import Coordinator


@pytest.fixture(autouse=True)
def _logging_configured() -> None:
    """Configure structlog before each test: a lazy first configure inside a capture would
    replace the capturing processors and lose the events a test asserts on, and a CLI test
    that configured logging onto its captured stderr must not leave it bound to that stream
    (closed once the test ends)."""
    configure_logging()


@pytest.fixture
def logs() -> Iterator[Events]:
    """Every structlog event this test emits (in-process daemons and threads included)."""
    with capture_logs() as entries:
        yield Events(entries)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    """One S3-protocol server for the session (moto, MinIO or MX8_TEST_S3_ENDPOINT)."""
    with local_s3_server() as s3:
        yield s3


@pytest.fixture
def s3_env(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> LocalS3:
    """Point this test's process (and children it spawns with os.environ) at the server."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


@pytest.fixture
def s3_sync_client(s3_env: LocalS3) -> Any:
    return sync_s3_client(S3Settings.from_env())


@pytest.fixture
def s3_bucket(s3_sync_client: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"mx8-test-{uuid.uuid4().hex[:12]}"
    s3_sync_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsEmulator]:
    """One gcp-storage-emulator for the session (skips, naming why, if it cannot start)."""
    try:
        with gcs_emulator() as server:
            yield server
    except EmulatorUnavailable as exc:
        pytest.skip(f"GCS emulator unavailable: {exc}")


@pytest.fixture
def gcs_bucket(gcs_server: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the GCS emulator, with this process pointed at the emulator."""
    for key, value in gcs_server.env.items():
        monkeypatch.setenv(key, value)
    name = f"mx8-test-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Azurite]:
    """One azurite blob service for the session (skips, naming why, if it cannot start)."""
    try:
        with azurite() as server:
            yield server
    except EmulatorUnavailable as exc:
        pytest.skip(f"Azure emulator (azurite) unavailable: {exc}")


@pytest.fixture
def az_container(azurite_server: Azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh container on azurite, with this process pointed at it."""
    for key in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in azurite_server.env.items():
        monkeypatch.setenv(key, value)
    name = f"mx8-test-{uuid.uuid4().hex[:12]}"
    azurite_server.create_container(name)
    return name


@pytest.fixture
def list_endpoint() -> Iterator[ListEndpoint]:
    """A LIST-only S3-protocol endpoint on loopback (tests set buckets, latency, denials)."""
    with serve_list_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def store_root(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """An isolated filesystem manifest store for one test."""
    root = str(tmp_path / "store")
    monkeypatch.setenv("MX8_MANIFEST_STORE_ROOT", root)
    return root


@pytest.fixture
async def start_coordinator() -> AsyncIterator[Callable[..., Awaitable[Coordinator]]]:
    """Factory: ``await start_coordinator(manifest_path, **config)`` -> a started Coordinator
    on 127.0.0.1 port 0 serving that manifest file; every one is shut down after the test."""
    started: list[Coordinator] = []

    async def start(path: Path, **overrides: Any) -> Coordinator:
        values: dict[str, Any] = {
            "dataset": str(path),
            "listen": "127.0.0.1:0",
            "lease_ttl_ms": 5000,
            "heartbeat_interval_ms": 100,
            # Leases are dynamic mode's; rank-exact tests pass mode="rank-exact".
            "mode": "dynamic",
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


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MX8_LOG_FORMAT", "console")
