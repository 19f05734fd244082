"""mx8d-agent: the per-host daemon that ingests the manifest, fetches and serves trainers."""

from mx8_agent.agent import Agent
from mx8_agent.config import AgentConfig, load_agent_config
from mx8_agent.ingest.manifest_ingest import IngestResult, IngestSettings, ingest_manifest
from mx8_agent.serve.trainer_hub import ReadyBatch, TrainerHub
from mx8_agent.work.ack_tracker import AckTracker, LeaseAcks, LeaseRef

__all__ = [
    "AckTracker",
    "Agent",
    "AgentConfig",
    "IngestResult",
    "IngestSettings",
    "LeaseAcks",
    "LeaseRef",
    "ReadyBatch",
    "TrainerHub",
    "ingest_manifest",
    "load_agent_config",
]
