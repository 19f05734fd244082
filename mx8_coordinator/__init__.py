"""mx8-coordinator: the head-node daemon that owns a job's snapshot and leases work."""

from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import (
    FileManifestSource,
    ManifestSource,
    StoreManifestSource,
)
from mx8_coordinator.server import Coordinator
from mx8_coordinator.state.job import Job, JobSpec
from mx8_coordinator.state.lease_log import LeaseLog
from mx8_coordinator.state.lease_scheduler import LeaseScheduler
from mx8_coordinator.state.node_registry import NodeRegistry

__all__ = [
    "Coordinator",
    "CoordinatorConfig",
    "FileManifestSource",
    "Job",
    "JobSpec",
    "LeaseLog",
    "LeaseScheduler",
    "ManifestSource",
    "NodeRegistry",
    "StoreManifestSource",
]
