"""mx8-coordinator: the head-node daemon that owns a job's snapshot and leases work."""

from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.job import Job, JobSpec
from mx8_coordinator.lease_log import LeaseLog
from mx8_coordinator.lease_scheduler import LeaseScheduler
from mx8_coordinator.manifest_serving import (
    FileManifestSource,
    ManifestSource,
    StoreManifestSource,
)
from mx8_coordinator.node_registry import NodeRegistry
from mx8_coordinator.server import Coordinator

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
