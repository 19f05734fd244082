"""Fixtures of the operator-surface tests: real coordinators on port 0 over manifest files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.manifests import write_manifest
from support.ops import Pki, make_pki

from mx8_coordinator.server import Coordinator


@pytest.fixture(autouse=True)
def _no_ambient_security(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients read MX8_TLS_* / MX8_AUTH_TOKEN: start every test from a clean environment."""
    for name in ("MX8_AUTH_TOKEN", "MX8_TLS_CERT", "MX8_TLS_KEY", "MX8_TLS_CA"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m", 600).path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def start_coordinator(
    manifest_path: Path, start_coordinator: Callable[..., Awaitable[Coordinator]]
) -> Callable[..., Awaitable[Coordinator]]:
    """Factory: ``await start_coordinator(**config)`` over this package's ``manifest_path``."""

    async def start(**overrides: Any) -> Coordinator:
        return await start_coordinator(manifest_path, **overrides)

    return start
