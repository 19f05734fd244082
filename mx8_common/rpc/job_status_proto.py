"""``JobStatus`` <-> the ``GetJobSnapshot`` reply (``mx8.v1.JobSnapshot``), both ways.

The coordinator's servicer sends ``job_status_to_proto(job.status())``; ``mx8 status``
rebuilds the same ``JobStatus`` with ``job_status_from_proto``, so both faces read alike.
"""

from __future__ import annotations

from mx8_common.rpc.job_status import (
    JobCounters,
    JobStatus,
    LeaseStatus,
    NodeStatus,
    RankStatus,
)
from mx8_common.rpc.proto import coordinator_pb2 as pb

__all__ = ["job_status_from_proto", "job_status_to_proto", "lease_to_proto"]


def lease_to_proto(le: LeaseStatus) -> pb.Lease:
    return pb.Lease(
        lease_id=le.lease_id,
        node_id=le.node_id,
        range=pb.WorkRange(start_id=le.start, end_id=le.end, epoch=le.epoch, seed=le.seed),
        cursor=le.cursor,
        expires_unix_ms=le.expires_unix_ms,
    )


def job_status_to_proto(s: JobStatus) -> pb.JobSnapshot:
    """The ``GetJobSnapshot`` reply of ``s`` (a node without a rank yet is sent as rank 0)."""
    c = s.counters
    return pb.JobSnapshot(
        leader=s.leader,
        leader_term=s.leader_term,
        job_id=s.job_id,
        dataset_link=s.dataset_link,
        manifest_hash=s.manifest_hash,
        total_samples=s.total_samples,
        world_size=s.world_size,
        epochs=s.epochs,
        job_ready=s.job_ready,
        job_drained=s.job_drained,
        nodes=[
            pb.NodeInfo(
                node_id=n.node_id,
                rank=n.rank or 0,
                alive=n.alive,
                last_heartbeat_unix_ms=n.last_heartbeat_unix_ms,
                samples_committed=n.samples_committed,
                hostname=n.hostname,
                stats=pb.NodeStats(
                    samples_delivered=n.samples_delivered,
                    bytes_fetched=n.bytes_fetched,
                    inflight_bytes=n.inflight_bytes,
                    fetch_retries=n.fetch_retries,
                ),
                finished=n.finished,
                samples_per_second=n.samples_per_second,
            )
            for n in s.nodes
        ],
        live_leases=[lease_to_proto(le) for le in s.live_leases],
        progress=[
            pb.EpochProgress(epoch=e, committed_samples=done, total_samples=s.total_samples)
            for e, done in enumerate(s.committed_by_epoch)
        ],
        counters=pb.Counters(
            leases_issued=c.leases_issued,
            leases_expired=c.leases_expired,
            leases_requeued=c.leases_requeued,
            leases_completed=c.leases_completed,
            samples_committed=c.samples_committed,
        ),
        started_unix_ms=s.started_unix_ms,
        samples_per_second=s.samples_per_second,
        mode=s.mode,
        ranks=[
            pb.RankProgress(
                rank=r.rank,
                world_size=r.world_size,
                world_id=r.world_id,
                epoch=r.epoch,
                step=r.step,
                finished=r.finished,
            )
            for r in s.ranks
        ],
        rate_basis=s.rate_basis,
        rate_window_ms=s.rate_window_ms,
        throughput_history=[
            pb.ThroughputPoint(unix_ms=at, samples_per_second=rate)
            for at, rate in s.throughput_history
        ],
    )


def job_status_from_proto(snap: pb.JobSnapshot) -> JobStatus:
    """The ``JobStatus`` a ``GetJobSnapshot`` reply carries.

    The proto has no "no rank yet", but ranks exist exactly when the world has frozen
    (``job_ready``): before that every node's rank is None again, as on the coordinator.
    """
    c = snap.counters
    return JobStatus(
        leader=snap.leader,
        leader_term=snap.leader_term,
        job_id=snap.job_id,
        dataset_link=snap.dataset_link,
        manifest_hash=snap.manifest_hash,
        total_samples=snap.total_samples,
        epochs=snap.epochs,
        world_size=snap.world_size,
        job_ready=snap.job_ready,
        job_drained=snap.job_drained,
        started_unix_ms=snap.started_unix_ms,
        samples_per_second=snap.samples_per_second,
        rate_basis=snap.rate_basis or "since_start",
        rate_window_ms=snap.rate_window_ms,
        throughput_history=tuple(
            (p.unix_ms, p.samples_per_second) for p in snap.throughput_history
        ),
        nodes=tuple(
            NodeStatus(
                node_id=n.node_id,
                hostname=n.hostname,
                rank=n.rank if snap.job_ready else None,
                alive=n.alive,
                last_heartbeat_unix_ms=n.last_heartbeat_unix_ms,
                samples_committed=n.samples_committed,
                samples_delivered=n.stats.samples_delivered,
                bytes_fetched=n.stats.bytes_fetched,
                inflight_bytes=n.stats.inflight_bytes,
                fetch_retries=n.stats.fetch_retries,
                finished=n.finished,
                samples_per_second=n.samples_per_second,
            )
            for n in snap.nodes
        ),
        live_leases=tuple(
            LeaseStatus(
                lease_id=le.lease_id,
                node_id=le.node_id,
                epoch=le.range.epoch,
                start=le.range.start_id,
                end=le.range.end_id,
                cursor=le.cursor,
                expires_unix_ms=le.expires_unix_ms,
                seed=le.range.seed,
            )
            for le in snap.live_leases
        ),
        committed_by_epoch=tuple(
            p.committed_samples for p in sorted(snap.progress, key=lambda p: p.epoch)
        ),
        counters=JobCounters(
            leases_issued=c.leases_issued,
            leases_expired=c.leases_expired,
            leases_requeued=c.leases_requeued,
            leases_completed=c.leases_completed,
            samples_committed=c.samples_committed,
        ),
        mode=snap.mode,
        ranks=tuple(
            RankStatus(
                rank=r.rank,
                world_size=r.world_size,
                world_id=r.world_id,
                epoch=r.epoch,
                step=r.step,
                finished=r.finished,
            )
            for r in snap.ranks
        ),
    )
