"""``JobStatus``: one job as the coordinator sees it, the one shape of every status face.

The coordinator's ``Job`` produces it; the ``GetJobSnapshot`` reply is its proto
(``job_status_proto``), ``/api/status`` and ``mx8 status --json`` are ``to_dict()``, the
HTML page and ``mx8 status``'s tables draw that dict, and the Prometheus counters are read
from ``counters`` at scrape time. Plain values only: no gRPC, proto or metrics imports.
Times are wall-clock unix milliseconds; ages are worked out when the dict is made.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["JobCounters", "JobStatus", "LeaseStatus", "NodeStatus", "RankStatus", "job_state"]

_STATE_TEXT = {
    "resolving": "resolving the dataset snapshot",
    "waiting_for_nodes": "waiting for nodes to register",
    "running": "running",
    "drained": "drained: every epoch is complete",
}


def job_state(*, ready: bool, drained: bool) -> str:
    """``waiting_for_nodes``, ``running`` or ``drained``."""
    if drained:
        return "drained"
    return "running" if ready else "waiting_for_nodes"


@dataclass(kw_only=True)
class JobCounters:
    """Totals since the job started (restored from the lease log on a restart).

    Mutable: the ``Job`` counts into its own instance and hands out copies.
    """

    leases_issued: int = 0
    leases_expired: int = 0
    leases_requeued: int = 0
    leases_completed: int = 0
    samples_committed: int = 0


@dataclass(frozen=True, kw_only=True)
class NodeStatus:
    """One node: identity, liveness, its committed samples and its last reported stats."""

    node_id: str
    hostname: str = ""
    #: None until the world freezes (then every registered node has a rank).
    rank: int | None = None
    alive: bool = True
    last_heartbeat_unix_ms: int = 0
    samples_committed: int = 0
    samples_delivered: int = 0
    bytes_fetched: int = 0
    inflight_bytes: int = 0
    #: Storage reads the node retried, as its last heartbeat reported.
    fetch_retries: int = 0
    #: Not alive, but it was told the job drained before it went silent: done, not lost.
    finished: bool = False
    #: Committed samples/s of this node over the recent window (0 once the job drained).
    samples_per_second: float = 0.0

    @property
    def state(self) -> str:
        """``alive``, ``finished`` (left after the job drained) or ``lost`` (went silent)."""
        if self.alive:
            return "alive"
        return "finished" if self.finished else "lost"


@dataclass(frozen=True, kw_only=True)
class LeaseStatus:
    """One live lease: ``[start, end)`` of ``epoch``, committed up to ``cursor``."""

    lease_id: str
    node_id: str
    epoch: int
    start: int
    end: int
    cursor: int
    expires_unix_ms: int
    #: The job's seed (the lease's work range carries it on the wire).
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class RankStatus:
    """Rank-exact mode: one trainer rank's acknowledged position, as its agent reported."""

    rank: int
    world_size: int
    world_id: str = ""
    epoch: int = 0
    step: int = 0
    #: Every batch of the job's last epoch is acknowledged.
    finished: bool = False


@dataclass(frozen=True, kw_only=True)
class JobStatus:
    """A consistent copy of one job's state, taken at one moment."""

    job_id: str
    dataset_link: str
    manifest_hash: str = ""
    total_samples: int = 0
    epochs: int = 0
    world_size: int = 0
    job_ready: bool = False
    job_drained: bool = False
    #: True while the coordinator resolves the snapshot (there is no job yet).
    resolving: bool = False
    started_unix_ms: int = 0
    samples_per_second: float = 0.0
    #: What ``samples_per_second`` is: ``window`` (recent, while running), ``final`` (the
    #: whole run's average, frozen when the job drained) or ``since_start``.
    rate_basis: str = "since_start"
    #: The averaging window of a ``window`` rate.
    rate_window_ms: int = 0
    #: (unix ms, samples/s) of recent moments, oldest first (a bounded ring buffer).
    throughput_history: tuple[tuple[int, float], ...] = ()
    nodes: tuple[NodeStatus, ...] = ()
    live_leases: tuple[LeaseStatus, ...] = ()
    #: Committed samples of epoch 0, 1, ...
    committed_by_epoch: tuple[int, ...] = ()
    counters: JobCounters = field(default_factory=JobCounters)
    #: ``rank-exact`` or ``dynamic`` (the coordinator's ``--mode``; empty while resolving).
    mode: str = ""
    #: Rank-exact mode: the trainer ranks of the world reported last.
    ranks: tuple[RankStatus, ...] = ()
    #: Lease log in a store: the leading coordinator (holder at address) and its term.
    leader: str = ""
    leader_term: int = 0

    @classmethod
    def before_job(cls, job_id: str, dataset_link: str) -> JobStatus:
        """The status while the snapshot is being resolved."""
        return cls(job_id=job_id, dataset_link=dataset_link, resolving=True)

    @property
    def state(self) -> str:
        """``resolving``, ``waiting_for_nodes``, ``running`` or ``drained``."""
        if self.resolving:
            return "resolving"
        return job_state(ready=self.job_ready, drained=self.job_drained)

    @property
    def state_text(self) -> str:
        """``state`` in words, for people."""
        return _STATE_TEXT[self.state]

    @property
    def nodes_live(self) -> int:
        return sum(1 for n in self.nodes if n.alive)

    def nodes_in(self, state: str) -> int:
        """Nodes whose ``NodeStatus.state`` is ``state``."""
        return sum(1 for n in self.nodes if n.state == state)

    def epoch_eta_seconds(self) -> list[float | None]:
        """Seconds until each epoch is complete at the current rate (epochs run in order,
        so an epoch waits for the ones before it); 0 when done, None when unknown."""
        out: list[float | None] = []
        remaining = 0
        for done in self.committed_by_epoch:
            remaining += max(0, self.total_samples - done)
            if done >= self.total_samples:
                out.append(0.0)
            elif self.state == "running" and self.samples_per_second > 0:
                out.append(remaining / self.samples_per_second)
            else:
                out.append(None)
        return out

    def to_dict(self, *, now_unix_ms: int | None = None) -> dict[str, Any]:
        """The ``/api/status`` JSON (also ``mx8 status --json``), ages as of ``now_unix_ms``."""
        now = int(time.time() * 1000) if now_unix_ms is None else now_unix_ms
        total = self.total_samples
        return {
            "state": self.state,
            "job_id": self.job_id,
            "dataset_link": self.dataset_link,
            "manifest_hash": self.manifest_hash,
            "total_samples": total,
            "epochs": self.epochs,
            "world_size": self.world_size,
            "job_ready": self.job_ready,
            "job_drained": self.job_drained,
            "generated_unix_ms": now,
            "started_unix_ms": self.started_unix_ms,
            "samples_per_second": self.samples_per_second,
            "rate_basis": self.rate_basis,
            "rate_window_ms": self.rate_window_ms,
            "throughput_history": [
                {"unix_ms": at, "samples_per_second": rate} for at, rate in self.throughput_history
            ],
            "nodes_by_state": {s: self.nodes_in(s) for s in ("alive", "finished", "lost")},
            "nodes": [
                {
                    "node_id": n.node_id,
                    "hostname": n.hostname,
                    "rank": n.rank,
                    "alive": n.alive,
                    "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
                    "last_heartbeat_age_ms": max(0, now - n.last_heartbeat_unix_ms),
                    "samples_committed": n.samples_committed,
                    "samples_delivered": n.samples_delivered,
                    "bytes_fetched": n.bytes_fetched,
                    "inflight_bytes": n.inflight_bytes,
                    "fetch_retries": n.fetch_retries,
                    "state": n.state,
                    "samples_per_second": n.samples_per_second,
                }
                for n in self.nodes
            ],
            "live_leases": [
                {
                    "lease_id": le.lease_id,
                    "node_id": le.node_id,
                    "epoch": le.epoch,
                    "start": le.start,
                    "end": le.end,
                    "cursor": le.cursor,
                    "expires_in_ms": le.expires_unix_ms - now,
                }
                for le in self.live_leases
            ],
            "progress": [
                {
                    "epoch": epoch,
                    "committed_samples": done,
                    "total_samples": total,
                    "fraction": (done / total) if total else 1.0,
                    "eta_seconds": eta,
                }
                for epoch, (done, eta) in enumerate(
                    zip(self.committed_by_epoch, self.epoch_eta_seconds(), strict=True)
                )
            ],
            "counters": asdict(self.counters),
            "mode": self.mode,
            "ranks": [asdict(r) for r in self.ranks],
            "leader": self.leader,
            "leader_term": self.leader_term,
        }
