"""The manifest store: immutable manifests by hash, intent pointers and indexer locks.

``base`` holds the layout and the integrity rules every backend shares; ``fs``, ``s3`` and
``azure`` are the backends; ``open_manifest_store`` picks one by the root's scheme.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mx8_common.config_fields import load_env, setting
from mx8_common.errors import ConfigError
from mx8_common.store.base import (
    DEFAULT_STORE_ROOT,
    STREAM_CHUNK,
    IntentRecord,
    LockState,
    ManifestMeta,
    ManifestStore,
    check_hash,
)

__all__ = [
    "DEFAULT_STORE_ROOT",
    "STREAM_CHUNK",
    "IntentRecord",
    "LockState",
    "ManifestMeta",
    "ManifestStore",
    "StoreConfig",
    "check_hash",
    "open_manifest_store",
    "resolve_store_root",
]


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Where the manifest store is."""

    root: str | None = setting(
        None,
        env="MX8_MANIFEST_STORE_ROOT",
        flag="--store",
        help="manifest store: a folder, s3://bucket/prefix or az://container/prefix "
        "(default ~/.mx8/manifests)",
    )


def resolve_store_root(root: str | None = None) -> str:
    """``root``, else ``MX8_MANIFEST_STORE_ROOT``, else ``~/.mx8/manifests``."""
    return root or load_env(StoreConfig).root or DEFAULT_STORE_ROOT


def open_manifest_store(root: str | None = None, **kwargs: Any) -> ManifestStore:
    """The store at ``root`` (folder, ``s3://bucket/prefix`` or ``az://container/prefix``);
    see ``resolve_store_root``.

    Keyword arguments go to the S3 backend (``s3_endpoint_url``).
    """
    root = resolve_store_root(root)
    if root.startswith("s3://"):
        from mx8_common.store.s3 import S3ManifestStore

        return S3ManifestStore(root, **kwargs)
    if root.startswith("az://"):
        from mx8_common.store.azure import AzureManifestStore

        return AzureManifestStore(root)
    if root.startswith("gs://"):
        # The store's single-writer lock needs conditional create, replace and delete
        # (ifGenerationMatch on GCS). gcp-storage-emulator, what the tests run against,
        # ignores every generation precondition (a second create with ifGenerationMatch=0
        # overwrites and answers 200), so such a store could not be tested here: not built.
        raise ConfigError(
            f"manifest store root {root!r}: a store on gs:// is not supported yet; keep the "
            "manifests in a folder (shared file system), under s3://bucket/prefix or "
            "az://container/prefix (MX8_MANIFEST_STORE_ROOT / --store); datasets on gs:// work "
            "with any of them"
        )
    if "://" in root and not root.startswith("file://"):
        raise ConfigError(
            f"manifest store root {root!r} has an unknown scheme; use a folder, "
            "s3://bucket/prefix or az://container/prefix (MX8_MANIFEST_STORE_ROOT / --store)"
        )
    from mx8_common.store.fs import FsManifestStore

    path = root[len("file://") :] if root.startswith("file://") else root
    return FsManifestStore(os.path.expanduser(path))
