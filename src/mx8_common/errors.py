"""The one error tree of mx8.

Every error a user or operator can see is an ``Mx8Error``; each message names the
problem and the fix. Foreign errors are translated at one boundary each (botocore in
the S3 layer, ``grpc.aio.AioRpcError`` in the clients) with ``raise ... from exc``.

    Mx8Error
    ├── ConfigError                  bad flag, env var or argument
    ├── LinkError                    dataset link that cannot be parsed (.link)
    ├── ManifestError                canonical manifest TSV rejected (.line_no)
    │   ├── ManifestSchemaMismatch     missing/unknown schema header, mixed chunk schemas
    │   ├── ManifestTruncated          input ended early (no final LF, short stream)
    │   ├── ManifestBadRow             wrong column count, bad number, empty location
    │   ├── ManifestNonSequentialId    sample ids not exactly 0..N-1
    │   ├── ManifestLineTooLong        a line longer than the carry bound
    │   ├── ManifestHashMismatch       bytes do not hash to the announced hash
    │   └── ManifestUnwritable         a record that cannot be written (TAB/CR/LF in a field)
    ├── SnapshotError                indexing a dataset failed (.link)
    │   ├── EmptyDatasetError          the folder or prefix holds no objects
    │   ├── NonMonotonicListingError   S3 listing not in strictly increasing key order
    │   └── LabelError                 label mode cannot be applied
    ├── StoreError                   manifest store problem (.hash)
    │   ├── SnapshotNotFoundError      the store lacks the requested hash
    │   ├── IntegrityError             stored bytes differ from their hash / from ours
    │   └── LockTimeoutError           waited too long for another indexer
    ├── StorageError                 reading or listing objects failed (.location)
    │   ├── BucketNotFoundError
    │   ├── AccessDeniedError
    │   ├── ObjectNotFoundError
    │   ├── ObjectChangedError         object_changed_since_snapshot
    │   └── TransientStorageError      throttling, resets, short bodies (retried)
    ├── LeaseError                   lease protocol violation (.lease_id)
    ├── CoordinatorError             coordinator unreachable or refused (.address)
    └── AgentError                   local agent unreachable or refused (.address)
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AgentError",
    "BucketNotFoundError",
    "ConfigError",
    "CoordinatorError",
    "EmptyDatasetError",
    "IntegrityError",
    "LabelError",
    "LeaseError",
    "LinkError",
    "LockTimeoutError",
    "ManifestBadRow",
    "ManifestError",
    "ManifestHashMismatch",
    "ManifestLineTooLong",
    "ManifestNonSequentialId",
    "ManifestSchemaMismatch",
    "ManifestTruncated",
    "ManifestUnwritable",
    "Mx8Error",
    "NonMonotonicListingError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "SnapshotError",
    "SnapshotNotFoundError",
    "StorageError",
    "StoreError",
    "TransientStorageError",
]


class Mx8Error(Exception):
    """Base of every error mx8 raises on purpose."""

    #: Short machine name used as the structlog event when this error is reported.
    event: str = "mx8_error"


class ConfigError(Mx8Error):
    """A flag, environment variable or argument has a value mx8 cannot use."""

    event = "config_invalid"


class LinkError(Mx8Error):
    """A dataset link cannot be parsed."""

    event = "dataset_link_invalid"

    def __init__(self, message: str, *, link: str) -> None:
        super().__init__(message)
        self.link = link


class ManifestError(Mx8Error):
    """The canonical manifest TSV was rejected."""

    event = "manifest_invalid"

    def __init__(self, message: str, *, line_no: int | None = None) -> None:
        super().__init__(message)
        self.line_no = line_no


class ManifestSchemaMismatch(ManifestError):
    event = "manifest_schema_mismatch"


class ManifestTruncated(ManifestError):
    event = "manifest_stream_truncated"


class ManifestBadRow(ManifestError):
    event = "manifest_bad_row"


class ManifestNonSequentialId(ManifestError):
    event = "manifest_non_sequential_id"


class ManifestLineTooLong(ManifestError):
    event = "manifest_line_too_long"


class ManifestHashMismatch(ManifestError):
    event = "manifest_hash_mismatch"


class ManifestUnwritable(ManifestError):
    event = "manifest_unwritable"


class SnapshotError(Mx8Error):
    """Indexing a dataset into a snapshot failed."""

    event = "snapshot_index_failed"

    def __init__(self, message: str, *, link: str | None = None) -> None:
        super().__init__(message)
        self.link = link


class EmptyDatasetError(SnapshotError):
    event = "snapshot_empty_dataset"


class NonMonotonicListingError(SnapshotError):
    event = "snapshot_non_monotonic_listing"


class LabelError(SnapshotError):
    event = "snapshot_label_error"


class StoreError(Mx8Error):
    """The manifest store cannot do what was asked."""

    event = "manifest_store_error"

    def __init__(self, message: str, *, manifest_hash: str | None = None) -> None:
        super().__init__(message)
        self.manifest_hash = manifest_hash


class SnapshotNotFoundError(StoreError):
    event = "snapshot_not_found"


class IntegrityError(StoreError):
    event = "manifest_store_integrity_error"


class LockTimeoutError(StoreError):
    event = "snapshot_wait_timeout"


class StorageError(Mx8Error):
    """Listing or reading objects failed."""

    event = "storage_error"

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class BucketNotFoundError(StorageError):
    event = "storage_bucket_not_found"


class AccessDeniedError(StorageError):
    event = "storage_access_denied"


class ObjectNotFoundError(StorageError):
    event = "storage_object_not_found"


class ObjectChangedError(StorageError):
    event = "object_changed_since_snapshot"


class TransientStorageError(StorageError):
    """A failure worth retrying: throttling, a reset connection, a short body."""

    event = "storage_transient_error"


class LeaseError(Mx8Error):
    """A lease request or progress report broke the lease protocol."""

    event = "lease_error"

    def __init__(self, message: str, *, lease_id: str | None = None) -> None:
        super().__init__(message)
        self.lease_id = lease_id


class CoordinatorError(Mx8Error):
    """The coordinator could not be reached or refused a call."""

    event = "coordinator_error"

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class AgentError(Mx8Error):
    """The local agent could not be reached or refused a call."""

    event = "agent_error"

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address
