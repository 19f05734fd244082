"""The coordinator over real gRPC on 127.0.0.1 with real clients: leasing end to end."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.coordinator import Ledger, run_node
from support.eventually import assert_eventually
from support.logs import Events
from support.manifests import write_manifest

from mx8_common.errors import CoordinatorError, LeaseNotFoundError, RegistrationTokenError
from mx8_common.rpc.coordinator_client import CoordinatorClient
from mx8_common.rpc.proto import coordinator_pb2 as pb
from mx8_coordinator.config import CoordinatorConfig
from mx8_coordinator.rpc.manifest_serving import FileManifestSource
from mx8_coordinator.server import SERVICE_NAME, Coordinator

JOB = "default"


def ledger_for(coord: Coordinator) -> Ledger:
    cfg, src = coord.config, coord.source
    assert src is not None
    return Ledger(src.total_samples, cfg.block_size, cfg.shuffle, cfg.seed, src.manifest_hash)


async def register_all(client: CoordinatorClient, *nodes: str) -> None:
    for node in nodes:
        await client.register_node(JOB, node, hostname=f"host-{node}")


async def test_coordinator_per_rank_order_is_deterministic(
    manifest_path: Path, start_coordinator
) -> None:
    async def one_run(seed: int, order: tuple[str, str]) -> dict[str, list[int]]:
        coord = await start_coordinator(
            manifest_path, world_size=2, block_size=64, shuffle=True, seed=seed, epochs=2
        )
        ledger = ledger_for(coord)
        async with CoordinatorClient(coord.address) as client:
            # Registration order differs between runs on purpose: ranks follow node ids.
            await register_all(client, *order)
            await asyncio.gather(*(run_node(client, JOB, n, ledger, want=1) for n in ("a", "b")))
        await coord.shutdown()
        ledger.assert_exactly_once(2)
        return {
            node: [i for e, s, t in spans for i in ledger.order(e).ids(s, t).tolist()]
            for node, spans in ledger.by_node.items()
        }

    first = await one_run(11, ("a", "b"))
    again = await one_run(11, ("b", "a"))
    other_seed = await one_run(12, ("a", "b"))
    assert first == again
    assert first != other_seed
    # Round-robin dealing: rank 0 ("a") holds blocks 0, 2, 4... of each epoch.
    assert first["a"][:64] != first["b"][:64] and len(first["a"]) + len(first["b"]) == 2000


async def test_coordinator_three_nodes_commit_every_sample_once(
    manifest_path: Path, start_coordinator, logs: Events
) -> None:
    coord = await start_coordinator(
        manifest_path, world_size=3, block_size=50, shuffle=True, seed=3, epochs=3
    )
    ledger = ledger_for(coord)
    logs.clear()
    async with CoordinatorClient(coord.address) as client:
        await register_all(client, "n1", "n2", "n3")
        await asyncio.gather(
            *(
                run_node(client, JOB, n, ledger, step=s)
                for n, s in (("n1", 7), ("n2", 13), ("n3", 50))
            )
        )
        snap = await client.get_job_snapshot(JOB)
    ledger.assert_exactly_once(3)
    assert snap.job_drained and snap.counters.samples_committed == 3000
    assert [p.committed_samples for p in snap.progress] == [1000, 1000, 1000]
    assert {n.node_id for n in snap.nodes} == {"n1", "n2", "n3"}
    names = logs.names()
    assert names.count("epoch_completed") == 3 and names.count("job_drained") == 1
    assert names.count("node_registered") == 3
    assert names.count("lease_completed") == snap.counters.leases_completed == 60


async def test_coordinator_requeues_remainder_of_silent_node(
    manifest_path: Path, start_coordinator, logs: Events
) -> None:
    coord = await start_coordinator(
        manifest_path, world_size=2, block_size=100, lease_ttl_ms=400, heartbeat_interval_ms=100
    )
    ledger = ledger_for(coord)
    logs.clear()
    # Lease ids carry the job incarnation's tag (none repeats after a restart without state).
    assert coord.job is not None
    first = f"{coord.job.incarnation}-L1"
    async with CoordinatorClient(coord.address) as client:
        await register_all(client, "dead", "live")
        # "dead" takes two leases, commits 3 reports of 7, then goes silent.
        await run_node(client, JOB, "dead", ledger, want=2, step=7, stop_after=3)
        (taken,) = [s for s in ledger.by_node["dead"] if s[1] == 0]

        stop = asyncio.Event()

        async def heartbeat() -> None:
            while not stop.is_set():
                await client.heartbeat(JOB, "live")
                await asyncio.sleep(0.05)

        beating = asyncio.create_task(heartbeat())
        await run_node(client, JOB, "live", ledger, want=1)
        stop.set()
        await beating
        snap = await client.get_job_snapshot(JOB)
        try:
            await client.report_progress(JOB, "dead", first, 30)
        except LeaseNotFoundError as exc:
            late = exc
    ledger.assert_exactly_once(1)
    assert late.lease_id == first and "expired at cursor 21" in str(late)
    # The remainder [21, 100) of dead's first lease went to "live" as its own lease.
    assert (0, 21, 100) in ledger.by_node["live"] and taken == (0, 0, 100)
    assert snap.counters.leases_expired == 2 and snap.counters.leases_requeued == 2
    dead_info = next(n for n in snap.nodes if n.node_id == "dead")
    assert not dead_info.alive and dead_info.samples_committed == 21
    names = logs.names()
    assert "lease_expired" in names and "lease_requeued" in names and "node_departed" in names


async def test_coordinator_restart_resumes_from_lease_log(
    manifest_path: Path, start_coordinator, tmp_path: Path, logs: Events
) -> None:
    # A TTL well above a lease-log sync stall (100-250 ms on a cloud VM's disk, more under
    # CI's load): node "a" reports after each answer, and 600 ms once expired its lease.
    settings = dict(world_size=2, block_size=100, shuffle=True, seed=9, epochs=2, lease_ttl_ms=2000)
    state = str(tmp_path / "state")
    coord = await start_coordinator(manifest_path, state_dir=state, **settings)
    ledger = ledger_for(coord)
    async with CoordinatorClient(coord.address) as client:
        await register_all(client, "a", "b")
        await run_node(client, JOB, "a", ledger, want=2, step=30, stop_after=5)
        await run_node(client, JOB, "b", ledger, want=1, step=40, stop_after=2)
        before = await client.get_job_snapshot(JOB)
    await coord.shutdown()
    in_flight = {le.lease_id: le.cursor for le in before.live_leases}
    committed = sum(len(ids) for ids in ledger.committed.values())
    assert before.counters.samples_committed == committed == 130 + 80 and len(in_flight) == 2

    logs.clear()
    coord = await start_coordinator(manifest_path, state_dir=state, **settings)
    async with CoordinatorClient(coord.address) as client:
        after = await client.get_job_snapshot(JOB)
        assert after.counters.samples_committed == before.counters.samples_committed
        assert {le.lease_id: le.cursor for le in after.live_leases} == in_flight
        # Node "a" resumes its in-flight lease from its logged cursor...
        a_lease = next(le for le in after.live_leases if le.node_id == "a")
        end = a_lease.range.end_id
        await client.report_progress(JOB, "a", a_lease.lease_id, end)
        ledger.commit(a_lease.range.epoch, a_lease.cursor, end)
        # ...while "b" never comes back: its lease expires and is re-queued later.
        await run_node(client, JOB, "a", ledger)
    ledger.assert_exactly_once(2)
    names = logs.names()
    assert "lease_log_replayed" in names and names.count("job_drained") == 1


async def test_coordinator_health_reflection_and_metrics(
    manifest_path: Path, tmp_path: Path, start_coordinator
) -> None:
    coord = await start_coordinator(
        manifest_path, metrics="127.0.0.1:0", block_size=100, state_dir=str(tmp_path / "state")
    )
    async with grpc.aio.insecure_channel(coord.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in replies for s in r.list_services_response.service]
        assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
    async with CoordinatorClient(coord.address) as client:
        await register_all(client, "a")
        await client.request_lease(JOB, "a", 3)

    def scrape() -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{coord.metrics_port}/metrics") as r:
            return r.read().decode()

    text = await asyncio.to_thread(scrape)
    assert "mx8_coordinator_leases_issued_total 3.0" in text
    assert "mx8_coordinator_nodes_live 1.0" in text
    assert 'mx8_coordinator_rpc_latency_seconds_count{method="RequestLease"} 1.0' in text
    # The leases' issue records went through the lease log: its syncs are timed.
    syncs = re.search(r"^mx8_coordinator_lease_log_sync_seconds_count (\S+)$", text, re.M)
    assert syncs is not None and float(syncs.group(1)) >= 1
    await coord.shutdown()
    async with grpc.aio.insecure_channel(coord.address) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            raise AssertionError("a stopped coordinator answered")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE


async def test_coordinator_serves_manifest_whole_and_streamed(
    tmp_path: Path, start_coordinator
) -> None:
    path = write_manifest(tmp_path / "m", 30_000).path  # ~1 MiB: more than one chunk
    coord = await start_coordinator(path)
    stored = path.read_bytes()
    digest = hashlib.sha256(stored).hexdigest()
    async with CoordinatorClient(coord.address) as client:
        whole = await client.get_manifest(JOB, digest)
        chunks = [c async for c in client.get_manifest_stream(JOB, digest)]
    assert whole.manifest_bytes == stored and whole.manifest_hash == digest
    assert len(chunks) == -(-len(stored) // (1 << 20)) > 1
    assert chunks[0].total_bytes == len(stored) and chunks[0].manifest_hash == digest
    assert [c.offset for c in chunks] == [i << 20 for i in range(len(chunks))]
    assert all(c.schema_version == 0 for c in chunks)
    assert b"".join(c.data for c in chunks) == stored


async def test_coordinator_grpc_unavailable_while_resolving(manifest_path: Path) -> None:
    # Until the snapshot is resolved every RPC is UNAVAILABLE (clients retry).
    release = asyncio.Event()

    async def slow_source() -> FileManifestSource:
        await release.wait()
        return await FileManifestSource.open(manifest_path)

    config = CoordinatorConfig(dataset=str(manifest_path), listen="127.0.0.1:0")
    coord = Coordinator(config, source=slow_source)
    starting = asyncio.create_task(coord.start())
    await assert_eventually(lambda: coord.port is not None)
    async with CoordinatorClient(coord.address) as client:
        try:
            await client.register_node(JOB, "a")
            raise AssertionError("registered before the snapshot was resolved")
        except CoordinatorError as exc:
            assert exc.code == "UNAVAILABLE" and "resolving" in str(exc)
        release.set()
        await starting
        assert (await client.register_node(JOB, "a")).job_ready
    await coord.shutdown()
    await coord.shutdown()


async def test_coordinator_report_ranks_refuses_a_call_without_the_nodes_registration_token(
    manifest_path: Path, start_coordinator, logs: Events
) -> None:
    """Rank-exact mode: only the agent that registered a node id reports its ranks."""
    coord = await start_coordinator(manifest_path, mode="rank-exact", world_size=1)
    rank = pb.RankProgress(rank=0, instance_id="i0", world_size=1, epoch=0, step=3)
    async with CoordinatorClient(coord.address) as n0, CoordinatorClient(coord.address) as fake:
        await n0.register_node(JOB, "n0", incarnation="n0-process")
        await fake.register_node(JOB, "fake", incarnation="fake-process")
        logs.clear()
        for token in (fake.registration_token, ""):
            fake.registration_token = token
            with pytest.raises(RegistrationTokenError, match="only the agent that registered"):
                await fake.report_ranks(JOB, "n0", [rank])
        refused = logs.named("registration_token_mismatch")
        assert len(refused) == 2 and {e["node_id"] for e in refused} == {"n0"}
        # The node's own agent, with its token, is heard.
        assert not (await n0.report_ranks(JOB, "n0", [])).job_drained


async def test_coordinator_client_resends_a_call_made_with_the_token_of_its_previous_registration(
    manifest_path: Path, start_coordinator, logs: Events
) -> None:
    """A call built before the client registered again (a new leader gave it a new token)
    is refused for the old token and sent once more with the new one; a refusal of the
    token the client holds now stands (another agent holds the node id)."""
    coord = await start_coordinator(manifest_path, world_size=1)
    async with CoordinatorClient(coord.address) as client:
        await client.register_node(JOB, "a", incarnation="a-process")
        current = client.registration_token
        sent: list[str] = []

        def registered_again_in_flight(token: str) -> pb.HeartbeatRequest:
            sent.append(token)
            if len(sent) == 1:
                client.registration_token = current  # the re-registration's reply landed
            return pb.HeartbeatRequest(job_id=JOB, node_id="a", registration_token=token)

        client.registration_token = "0" * 32  # the token of the registration before
        await client._call_as_node("Heartbeat", registered_again_in_flight)
        assert sent == ["0" * 32, current]
        assert len(logs.named("registration_token_mismatch")) == 1

        client.registration_token = "1" * 32  # refused with the token it holds now
        with pytest.raises(RegistrationTokenError):
            await client.heartbeat(JOB, "a")


async def test_coordinator_client_call_refused_before_its_registrations_answer_waits_for_it(
    manifest_path: Path, start_coordinator
) -> None:
    """A coordinator restarted without state holds a node's new token once it has logged the
    registration, before its answer reaches the agent: a heartbeat refused for the old token
    in that window waits for the answer and is sent again with the new token."""
    first = await start_coordinator(manifest_path, world_size=1)
    async with CoordinatorClient(first.address) as client:
        await client.register_node(JOB, "a", incarnation="a-process")
        old = client.registration_token
        await first.shutdown()
        second = await start_coordinator(manifest_path, world_size=1, listen=first.address)
        assert second.job is not None
        job, append = second.job, second.job._append
        logging, release = asyncio.Event(), asyncio.Event()

        async def slow_append(records: list[object]) -> None:
            logging.set()
            await release.wait()  # a slow fsync: the new token is held, not yet answered
            await append(records)

        job._append = slow_append  # type: ignore[method-assign]
        registering = asyncio.create_task(client.register_node(JOB, "a", incarnation="a-process"))
        await asyncio.wait_for(logging.wait(), 10)
        beat = asyncio.create_task(client.heartbeat(JOB, "a"))
        await asyncio.sleep(0.2)  # its refusal (the old token) is back; the answer is not
        assert not beat.done()
        release.set()
        new = (await registering).registration_token
        assert (await beat).job_ready and new not in ("", old)
