"""JobStatus: the one status shape survives the GetJobSnapshot proto, and its dict is the
``/api/status`` JSON."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mx8_common.rpc.job_status import JobCounters, JobStatus, LeaseStatus, NodeStatus
from mx8_common.rpc.job_status_proto import job_status_from_proto, job_status_to_proto
from mx8_common.rpc.proto import coordinator_pb2 as pb

_u32 = st.integers(min_value=0, max_value=2**32 - 1)
_u64 = st.integers(min_value=0, max_value=2**64 - 1)
_i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_text = st.text(max_size=10)


@st.composite
def statuses(draw: st.DrawFn) -> JobStatus:
    ready = draw(st.booleans())
    nodes = draw(
        st.lists(
            st.builds(
                NodeStatus,
                node_id=_text,
                hostname=_text,
                # Ranks exist exactly once the world froze (job_ready).
                rank=_u32 if ready else st.none(),
                alive=st.booleans(),
                last_heartbeat_unix_ms=_i64,
                samples_committed=_u64,
                samples_delivered=_u64,
                bytes_fetched=_u64,
                inflight_bytes=_u64,
                finished=st.booleans(),
                fetch_retries=_u64,
                samples_per_second=st.floats(allow_nan=False),
            ),
            max_size=4,
        )
    )
    leases = st.builds(
        LeaseStatus,
        lease_id=_text,
        node_id=_text,
        epoch=_u32,
        start=_u64,
        end=_u64,
        cursor=_u64,
        expires_unix_ms=_i64,
        seed=_u64,
    )
    counters = st.builds(
        JobCounters,
        leases_issued=_u64,
        leases_expired=_u64,
        leases_requeued=_u64,
        leases_completed=_u64,
        samples_committed=_u64,
    )
    return JobStatus(
        job_id=draw(_text),
        dataset_link=draw(_text),
        manifest_hash=draw(_text),
        total_samples=draw(_u64),
        epochs=draw(_u32),
        world_size=draw(_u32),
        job_ready=ready,
        job_drained=draw(st.booleans()),
        started_unix_ms=draw(_i64),
        samples_per_second=draw(st.floats(allow_nan=False)),
        rate_basis=draw(st.sampled_from(["window", "final", "since_start"])),
        rate_window_ms=draw(_i64),
        throughput_history=tuple(
            draw(st.lists(st.tuples(_i64, st.floats(allow_nan=False)), max_size=4))
        ),
        nodes=tuple(nodes),
        live_leases=tuple(draw(st.lists(leases, max_size=4))),
        committed_by_epoch=tuple(draw(st.lists(_u64, max_size=4))),
        counters=draw(counters),
    )


@given(statuses())
def test_job_status_survives_the_snapshot_proto(status: JobStatus) -> None:
    wire = job_status_to_proto(status).SerializeToString()
    assert job_status_from_proto(pb.JobSnapshot.FromString(wire)) == status


def test_job_status_dict_is_the_api_status_json() -> None:
    status = JobStatus(
        job_id="j",
        dataset_link="s3://b/p/",
        manifest_hash="ab" * 32,
        total_samples=200,
        epochs=2,
        world_size=1,
        job_ready=True,
        started_unix_ms=1_000,
        samples_per_second=12.5,
        nodes=(
            NodeStatus(
                node_id="n", hostname="h", rank=0, last_heartbeat_unix_ms=9_000, bytes_fetched=7
            ),
        ),
        live_leases=(
            LeaseStatus(
                lease_id="L1",
                node_id="n",
                epoch=0,
                start=0,
                end=50,
                cursor=10,
                expires_unix_ms=12_000,
            ),
        ),
        committed_by_epoch=(50, 0),
        counters=JobCounters(leases_issued=2, leases_completed=1, samples_committed=50),
    )
    d = status.to_dict(now_unix_ms=10_000)
    assert d["state"] == "running" and d["generated_unix_ms"] == 10_000
    assert d["nodes"][0]["last_heartbeat_age_ms"] == 1_000 and d["nodes"][0]["bytes_fetched"] == 7
    assert d["live_leases"][0]["expires_in_ms"] == 2_000
    assert d["progress"][0] == {
        "epoch": 0,
        "committed_samples": 50,
        "total_samples": 200,
        "fraction": 0.25,
        "eta_seconds": 12.0,  # 150 left at 12.5/s
    }
    assert d["progress"][1]["eta_seconds"] == 28.0  # after epoch 0's 150, its own 200
    assert d["counters"] == {
        "leases_issued": 2,
        "leases_expired": 0,
        "leases_requeued": 0,
        "leases_completed": 1,
        "samples_committed": 50,
    }


def test_job_status_states() -> None:
    before = JobStatus.before_job("j", "s3://b/")
    assert before.state == "resolving" and before.state_text == "resolving the dataset snapshot"
    assert JobStatus(job_id="j", dataset_link="").state == "waiting_for_nodes"
    assert JobStatus(job_id="j", dataset_link="", job_ready=True).state == "running"
    assert JobStatus(job_id="j", dataset_link="", job_drained=True).state == "drained"
    alive = NodeStatus(node_id="a")
    gone = NodeStatus(node_id="b", alive=False)
    assert JobStatus(job_id="j", dataset_link="", nodes=(alive, gone)).nodes_live == 1
