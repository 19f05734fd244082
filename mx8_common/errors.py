"""The one error tree of mx8.

Every error a user or operator can see is an ``Mx8Error``; each message names the
problem and the fix. Foreign errors are translated at one boundary each (botocore in
the S3 layer, ``grpc.aio.AioRpcError`` in the clients), ``raise ... from None`` where the
one-line message carries what the original said: a user sees one error, not a chain of
internals (the original stays reachable as ``__context__``).

    Mx8Error
    ├── ConfigError                  bad flag, env var or argument
    │   ├── ContractError              a trainer disagrees with the job or another rank (.field)
    │   │   └── RankReportError              an agent's report conflicts with the known world
    │   └── ResumeError                a load_state_dict state that does not fit (.key)
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
    │   ├── UnsupportedKeyError        an object key a manifest cannot hold (TAB/CR/LF) (.key)
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
    │   ├── LeaseNotFoundError         unknown, completed-elsewhere or expired lease: drop it
    │   ├── LeaseRangeError            cursor outside the lease's [start, end]
    │   └── LeaseStateError            cursor regression, lease held by another node
    ├── LeaseLogError                lease log unreadable or from another job (.path)
    │   └── CoordinatorFencedError     another coordinator holds the job's term (.job_id, .term)
    ├── JobStateError                call not allowed in the job's current state (.node_id)
    │   ├── NodeNotRegisteredError     node must RegisterNode first
    │   ├── NodeIdInUseError           a live agent of another incarnation holds the id
    │   ├── NodeIdentityError          node id is not a name of the client certificate
    │   ├── RegistrationTokenError     a report without the node registration's token
    │   └── JobNotReadyError           world not formed yet (nodes or trainer ranks missing)
    ├── RequestError                 malformed request: empty id, want=0 (.field)
    ├── ManifestTooLargeError        whole-manifest reply over the gRPC message cap
    ├── CoordinatorError             coordinator unreachable or refused (.address, .code)
    ├── CoordinatorReplyError        a coordinator's reply field is unusable (.field)
    ├── AgentError                   local agent unreachable or refused (.address)
    ├── DecodeError                  a sample's bytes are not a decodable image (.location)
    ├── TrainerResumeError           agent cannot resume a trainer's stream (.trainer_id)
    ├── ManifestChangedError         coordinator now serves another snapshot (.expected, .got)
    └── CoordinatorStateLostError    coordinator restarted without its lease log (.expected, .got)
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AgentError",
    "BucketNotFoundError",
    "ConfigError",
    "ContractError",
    "CoordinatorError",
    "CoordinatorFencedError",
    "CoordinatorReplyError",
    "CoordinatorStateLostError",
    "DecodeError",
    "EmptyDatasetError",
    "IntegrityError",
    "JobNotReadyError",
    "JobStateError",
    "LabelError",
    "LeaseError",
    "LeaseLogError",
    "LeaseNotFoundError",
    "LeaseRangeError",
    "LeaseStateError",
    "LinkError",
    "LockTimeoutError",
    "ManifestBadRow",
    "ManifestChangedError",
    "ManifestError",
    "ManifestHashMismatch",
    "ManifestLineTooLong",
    "ManifestNonSequentialId",
    "ManifestSchemaMismatch",
    "ManifestTooLargeError",
    "ManifestTruncated",
    "ManifestUnwritable",
    "Mx8Error",
    "NodeIdInUseError",
    "NodeIdentityError",
    "NodeNotRegisteredError",
    "NonMonotonicListingError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "RankReportError",
    "RegistrationTokenError",
    "RequestError",
    "ResumeError",
    "SnapshotError",
    "SnapshotNotFoundError",
    "StorageError",
    "StoreError",
    "TrainerResumeError",
    "TransientStorageError",
    "UnsupportedKeyError",
]


class Mx8Error(Exception):
    """Base of every error mx8 raises on purpose."""

    #: Short machine name used as the structlog event when this error is reported.
    event: str = "mx8_error"


class ConfigError(Mx8Error):
    """A flag, environment variable or argument has a value mx8 cannot use."""

    event = "config_invalid"


class ContractError(ConfigError):
    """A trainer's rank contract (seed, shuffle, batch size, drop_last, world size, start
    point) disagrees with the job or with another rank of its world; the message names
    both values."""

    event = "rank_contract_mismatch"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RankReportError(ContractError):
    """What an agent reports of its trainer ranks (their world contract and position)
    conflicts with the world the coordinator knows or rebuilt from other agents: another
    contract, a rank claimed twice, or a position outside the job."""

    event = "rank_report_refused"


class ResumeError(ConfigError):
    """A ``load_state_dict`` state that does not fit this loader (another snapshot or
    shard, a missing or malformed entry, a position outside the epoch); ``key`` names the
    state entry."""

    event = "resume_state_invalid"

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


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


class UnsupportedKeyError(SnapshotError):
    """An object key (or file name) holds a character the manifest TSV cannot carry."""

    event = "snapshot_unsupported_key"

    def __init__(self, message: str, *, link: str | None = None, key: str = "") -> None:
        super().__init__(message, link=link)
        self.key = key


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


class LeaseNotFoundError(LeaseError):
    """The lease is unknown, or it expired and its remainder was re-queued: drop it."""

    event = "lease_not_found"


class LeaseRangeError(LeaseError):
    """A reported cursor lies outside the lease's range."""

    event = "lease_cursor_out_of_range"


class LeaseStateError(LeaseError):
    """The lease cannot take this report now (cursor regression, held by another node)."""

    event = "lease_state_error"


class LeaseLogError(Mx8Error):
    """The coordinator's lease log cannot be read or belongs to another job."""

    event = "lease_log_error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CoordinatorFencedError(LeaseLogError):
    """Another coordinator owns the job's lease log in the store (a newer term, or a
    leader record that is still renewed): this one must not write or lease, and exits."""

    event = "coordinator_fenced"

    def __init__(
        self, message: str, *, path: str | None = None, job_id: str = "", term: int = 0
    ) -> None:
        super().__init__(message, path=path)
        self.job_id = job_id
        self.term = term


class JobStateError(Mx8Error):
    """The call is not allowed in the job's current state."""

    event = "job_state_error"

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class NodeNotRegisteredError(JobStateError):
    event = "node_not_registered"


class JobNotReadyError(JobStateError):
    event = "job_not_ready"


class NodeIdentityError(JobStateError):
    """With ``--tls-bind-node-id``, a request's node id is not a name of the client's
    certificate (its CN or a DNS SAN): one agent cannot act as another."""

    event = "node_identity_mismatch"


class RegistrationTokenError(JobStateError):
    """A heartbeat, lease request or progress report for a node id without the token its
    current registration got: only the agent that registered may act as that node."""

    event = "registration_token_mismatch"


class NodeIdInUseError(JobStateError):
    """Another live agent (on ``hostname``) holds this node id: two agents with one
    ``--node-id`` would take each other's leases."""

    event = "node_id_in_use"

    def __init__(
        self, message: str, *, node_id: str | None = None, hostname: str | None = None
    ) -> None:
        super().__init__(message, node_id=node_id)
        self.hostname = hostname


class RequestError(Mx8Error):
    """A request is malformed (empty id, zero count): the caller has a bug."""

    event = "request_invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ManifestTooLargeError(Mx8Error):
    """A whole-manifest reply would exceed the gRPC message size cap."""

    event = "manifest_too_large"


class CoordinatorError(Mx8Error):
    """The coordinator could not be reached or refused a call.

    ``code`` is the gRPC status name (``"NOT_FOUND"``, ``"UNAVAILABLE"``...) so callers
    can tell a refused call from an unreachable coordinator.
    """

    event = "coordinator_error"

    def __init__(
        self, message: str, *, address: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.address = address
        self.code = code


class CoordinatorReplyError(Mx8Error):
    """A coordinator answered with a value this node cannot use (a bad hash, a lease past
    the manifest's end, a zero block size): the node fails closed instead of acting on it.
    ``field`` names the reply field."""

    event = "coordinator_reply_invalid"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class AgentError(Mx8Error):
    """The local agent could not be reached or refused a call."""

    event = "agent_error"

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class DecodeError(Mx8Error):
    """A sample's bytes could not be decoded (a corrupt or non-image object).

    ``location`` names the object and ``sample_id`` its row in the snapshot.
    """

    event = "sample_decode_error"

    def __init__(
        self, message: str, *, location: str | None = None, sample_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.location = location
        self.sample_id = sample_id


class TrainerResumeError(Mx8Error):
    """An agent cannot resume a trainer's stream: it never served ``trainer_id`` (it
    restarted since), so it cannot tell which batches the trainer already consumed."""

    event = "trainer_resume_refused"

    def __init__(self, message: str, *, trainer_id: str | None = None) -> None:
        super().__init__(message)
        self.trainer_id = trainer_id


class ManifestChangedError(Mx8Error):
    """A re-registration found the coordinator serving another manifest hash than the one
    this node's trainers are reading (``expected``); ``got`` is the new one."""

    event = "coordinator_manifest_changed"

    def __init__(self, message: str, *, expected: str, got: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class CoordinatorStateLostError(Mx8Error):
    """Dynamic mode: a re-registration found another job incarnation (``got``) than the one
    this node registered with (``expected``): the coordinator restarted without its lease
    log, so the job's progress is gone and its leases would be delivered again."""

    event = "coordinator_state_lost"

    def __init__(self, message: str, *, expected: str, got: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got
