"""``SnapshotResolverConfig``: how a dataset link is indexed and where its snapshot is stored.

Read from ``MX8_SNAPSHOT_*`` and ``MX8_MANIFEST_STORE_ROOT`` by embedded ``mx8.load`` and
``mx8-snapshot-resolve``; the coordinator exposes the same settings as flags (its config
re-uses these declarations) and builds this object from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mx8_common.config_fields import load_env, parse_bool, setting, setting_names, shared
from mx8_common.errors import ConfigError
from mx8_common.manifest.labels import LABEL_MODES
from mx8_common.snapshot.sample_filter import validate_files
from mx8_common.store import StoreConfig

__all__ = ["SnapshotResolverConfig"]


def _optional_bool(text: str) -> bool | None:
    return None if text.strip().lower() in ("", "auto") else parse_bool(text)


@dataclass(frozen=True, kw_only=True)
class SnapshotResolverConfig:
    """How a dataset link is indexed into a snapshot and where it is stored."""

    recursive: bool = setting(
        True, env="MX8_SNAPSHOT_RECURSIVE", help="index nested keys/folders, not only direct ones"
    )
    label_mode: str = setting(
        "auto", env="MX8_SNAPSHOT_LABEL_MODE", help="labels: none, imagefolder or auto"
    )
    materialize_manifest_bytes: bool = setting(
        True,
        env="MX8_SNAPSHOT_MATERIALIZE_MANIFEST_BYTES",
        help="also return the manifest bytes in memory (the Python API); daemons use false",
    )
    store_root: str | None = shared(StoreConfig, "root")
    external_sort: bool = setting(
        False,
        env="MX8_SNAPSHOT_S3_EXTERNAL_SORT",
        help="spill keys to sorted run files and merge, for endpoints that list out of order",
    )
    spill_keys_per_run: int = setting(
        100_000, env="MX8_SNAPSHOT_S3_SPILL_KEYS_PER_RUN", help="keys per external-sort run"
    )
    list_concurrency: int = setting(
        32,
        env="MX8_SNAPSHOT_LIST_CONCURRENCY",
        flag="--list-concurrency",
        help="S3 LIST requests in flight while indexing (key ranges listed concurrently, "
        "same manifest); 1: one page after another",
    )
    lock_stale_ms: int = setting(
        60_000,
        env="MX8_SNAPSHOT_LOCK_STALE_MS",
        help="take over an indexer lock whose heartbeat is this old",
    )
    wait_timeout_ms: int = setting(
        0,
        env="MX8_SNAPSHOT_WAIT_TIMEOUT_MS",
        help="cap on waiting for another live indexer; 0: wait while its heartbeat advances "
        "(a dead one is taken over after the stale time)",
    )
    files: str = setting(
        "all",
        env="MX8_SNAPSHOT_FILES",
        help="which objects are samples: all, or images (torchvision ImageFolder's rule: "
        "image extensions inside class folders, no hidden files)",
    )
    show_progress: bool | None = setting(
        None,
        env="MX8_SNAPSHOT_PROGRESS",
        parse=_optional_bool,
        help="progress bar while indexing (unset or auto: only on a TTY)",
    )
    #: S3 endpoint of listing and store; None: ``S3Settings.from_env()`` (``MX8_S3_ENDPOINT_URL``).
    s3_endpoint_url: str | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise ConfigError(
                f"label mode {self.label_mode!r} is not one of {', '.join(LABEL_MODES)}; set "
                f"{setting_names(SnapshotResolverConfig, 'label_mode')}"
            )
        validate_files(self.files)
        for name in ("spill_keys_per_run", "lock_stale_ms", "list_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} must be >= 1, got {getattr(self, name)}; set "
                    f"{setting_names(SnapshotResolverConfig, name)}"
                )
        if self.wait_timeout_ms < 0:
            raise ConfigError(
                f"wait_timeout_ms must be >= 0 (0: no cap), got {self.wait_timeout_ms}; set "
                f"{setting_names(SnapshotResolverConfig, 'wait_timeout_ms')}"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> SnapshotResolverConfig:
        """Defaults, then ``MX8_*`` env vars, then ``overrides`` (None values are ignored)."""
        return load_env(cls, environ, **overrides)
