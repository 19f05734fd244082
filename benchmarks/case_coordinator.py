"""Coordinator latency: RequestLease and ReportProgress with 64 simulated agents.

The coordinator serves a manifest from its own process. One client process runs 64
agents (one gRPC channel each, as real agents have): register, then lease and report
progress in steps, as fast as answers come, for a fixed time. Each call's round trip is
timed; p50/p99 over all calls of both RPCs are the result. 64 agents on one core of a
2-core box measure the client's scheduling too, so this is an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import numpy as np

from benchmarks.bench_env import BenchEnv, run_child
from benchmarks.case_manifest_stream import write_manifest
from benchmarks.coordinator_child import serve_coordinator
from benchmarks.report import Row

__all__ = ["run"]

CASE = "coordinator"
AGENTS = 64
BLOCK = 512
STEP = 128


async def _agent(client, node: str, stop_at: float, lat: list[float]) -> int:  # type: ignore[no-untyped-def]
    calls = 0
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        grant = await client.request_lease("default", node, 1)
        lat.append(time.perf_counter() - t0)
        calls += 1
        if grant.job_drained:
            break
        if not grant.leases:
            await asyncio.sleep(grant.wait_ms / 1000)
            continue
        for lease in grant.leases:
            cursor = lease.cursor
            while cursor < lease.range.end_id and time.perf_counter() < stop_at:
                cursor = min(lease.range.end_id, cursor + STEP)
                t0 = time.perf_counter()
                await client.report_progress("default", node, lease.lease_id, cursor)
                lat.append(time.perf_counter() - t0)
                calls += 1
    return calls


async def _drive(address: str, seconds: float) -> dict[str, float]:
    from mx8_common.coordinator_client import CoordinatorClient

    clients = [CoordinatorClient(address, tls=None, token="") for _ in range(AGENTS)]
    try:
        await asyncio.gather(
            *(c.register_node("default", f"agent-{i}") for i, c in enumerate(clients))
        )
        lat: list[float] = []
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        calls = await asyncio.gather(
            *(_agent(c, f"agent-{i}", stop_at, lat) for i, c in enumerate(clients))
        )
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    ms = np.array(lat) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "calls_per_s": sum(calls) / elapsed,
        "calls": float(sum(calls)),
    }


def run(env: BenchEnv) -> list[Row]:
    seconds = env.size(3, 10)
    path = write_manifest(env.scratch("coord-manifest"), 1_000_000 if not env.quick else 200_000)
    results = []
    for _ in range(env.repeats):
        # A fresh coordinator per repeat: every run starts from an unleased job.
        with serve_coordinator(path, world_size=AGENTS, block_size=BLOCK) as info:
            results.append(run_child(__name__, ["--child", info["address"], str(seconds)]))
    p50 = [r["p50_ms"] for r in results]
    p99 = [r["p99_ms"] for r in results]
    rate = statistics.median(r["calls_per_s"] for r in results)
    return [
        Row(
            CASE,
            f"RequestLease+ReportProgress p50, {AGENTS} agents",
            "ms",
            statistics.median(p50),
            samples=p50,
            higher_is_better=False,
            note=f"{rate:,.0f} calls/s total",
        ),
        Row(
            CASE,
            f"RequestLease+ReportProgress p99, {AGENTS} agents",
            "ms",
            statistics.median(p99),
            target=5.0,
            higher_is_better=False,
            samples=p99,
        ),
    ]


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, required=True)
    address, secs = parser.parse_args().child
    print(json.dumps(uvloop.run(_drive(address, float(secs)))))
