"""``mx8.resolve_manifest_hash``: a dataset link -> the hash of its stored snapshot."""

from __future__ import annotations

from mx8_common.snapshot.resolver import SnapshotResolverConfig, resolve_snapshot_sync

__all__ = ["resolve_manifest_hash"]


def resolve_manifest_hash(
    link: str,
    *,
    recursive: bool = True,
    store: str | None = None,
    label_mode: str = "auto",
    files: str | None = None,
) -> str:
    """Index ``link`` (or reuse its stored snapshot) and return the manifest hash.

    ``link`` is ``s3://bucket/prefix/``, ``gs://bucket/prefix/``, ``az://container/prefix/``,
    ``/abs/dir`` or ``file:///abs/dir``, optionally with ``@refresh`` or ``@sha256:<hash>``.
    ``store`` is a manifest store root (folder, ``s3://bucket/prefix`` or
    ``az://container/prefix``; default ``MX8_MANIFEST_STORE_ROOT`` or ``~/.mx8/manifests``).
    ``recursive``, ``label_mode`` and ``files`` are those of ``mx8.load`` (the snapshot
    ``vision.ImageFolderLoader`` reads has ``files="images"``). Works from plain code and
    from inside a running event loop.
    """
    config = SnapshotResolverConfig.from_env(
        recursive=recursive,
        label_mode=label_mode,
        store_root=store,
        materialize_manifest_bytes=False,  # only the hash is returned: never load the bytes
        files=files,
    )
    return resolve_snapshot_sync(link, config).manifest_hash
