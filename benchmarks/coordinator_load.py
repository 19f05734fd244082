"""One client process of the coordinator benchmark: a share of the simulated agents.

``python -m benchmarks.coordinator_load ADDRESS --first I --agents N --total T --seconds S
[--interval-ms M] [--method lease|health]`` registers agents ``agent-I .. agent-(I+N-1)``
of ``T`` in all (one gRPC channel each, as real agents have, all on this process's event
loop), prints ``{"ready": true}`` and waits for a line on stdin (the parent's start signal,
so every process starts its timed window together). Each agent then leases and reports
progress in steps for ``S`` seconds: back to back when ``M`` is 0 (closed loop: measures
capacity), or one call every ``M`` ms on a fixed schedule (open loop: a late answer does
not lower the offered rate, so queueing shows up in the latencies instead of hiding in a
lower rate). Every call's round trip is timed here with ``perf_counter``; the last stdout
line is a JSON object with the samples in microseconds, so the parent can merge processes
exactly.

``--method health`` sends the standard gRPC health ``Check`` instead, on the same
schedule, each agent from a channel of its own beside its client's (same address and
options): a unary call that touches no job state and no disk. Its latency is the floor a
``grpc.aio`` server in Python gives on this box at that moment, which the lease calls'
latency is read against.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import resource
import sys
import time
from typing import Any

__all__ = ["METHODS", "STEP", "drive_agents"]

#: Samples reported per ReportProgress (a lease of BLOCK positions takes BLOCK / STEP).
STEP = 128
#: What each simulated agent calls: the lease protocol, or the bare gRPC floor.
METHODS = ("lease", "health")


class _Pacer:
    """Open-loop schedule: the next call is due ``interval`` after the previous due time."""

    def __init__(self, interval_s: float, offset_s: float) -> None:
        self._interval = interval_s
        self._due = time.perf_counter() + offset_s

    async def wait(self) -> None:
        if self._interval <= 0:
            return
        delay = self._due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        self._due += self._interval


async def _agent(client: Any, node: str, stop_at: float, pacer: _Pacer, lat_us: list[int]) -> int:
    calls = 0
    while time.perf_counter() < stop_at:
        await pacer.wait()
        t0 = time.perf_counter()
        grant = await client.request_lease("default", node, 1)
        lat_us.append(round((time.perf_counter() - t0) * 1e6))
        calls += 1
        if grant.job_drained:
            break
        if not grant.leases:
            # This rank's share of the epoch is issued; the next epoch is dealt when every
            # rank's is. Wait as told, but not past the timed window.
            await asyncio.sleep(min(grant.wait_ms / 1000, max(0.0, stop_at - time.perf_counter())))
            continue
        for lease in grant.leases:
            cursor = lease.cursor
            while cursor < lease.range.end_id and time.perf_counter() < stop_at:
                cursor = min(lease.range.end_id, cursor + STEP)
                await pacer.wait()
                t0 = time.perf_counter()
                await client.report_progress("default", node, lease.lease_id, cursor)
                lat_us.append(round((time.perf_counter() - t0) * 1e6))
                calls += 1
    return calls


async def _health_check(client: Any) -> tuple[Any, Any]:
    """A connected channel beside ``client``'s (same address and options) and its
    health ``Check`` call with the request bound."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mx8_common.rpc.channels import aio_channel

    channel = aio_channel(client.address, tls=client.tls)
    check = functools.partial(
        health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest()
    )
    await check()  # connected before the timed window, as the registered clients are
    return channel, check


async def _health(check: Any, stop_at: float, pacer: _Pacer, lat_us: list[int]) -> int:
    calls = 0
    while time.perf_counter() < stop_at:
        await pacer.wait()
        t0 = time.perf_counter()
        await check()
        lat_us.append(round((time.perf_counter() - t0) * 1e6))
        calls += 1
    return calls


async def drive_agents(
    address: str,
    first: int,
    agents: int,
    seconds: float,
    interval_ms: float,
    total: int = 0,
    method: str = "lease",
) -> dict[str, Any]:
    """Register, wait for the start line on stdin, run the agents; samples and counts."""
    from mx8_common.rpc.coordinator_client import CoordinatorClient

    if method not in METHODS:
        raise ValueError(f"method is {method!r}; one of {', '.join(METHODS)}")
    clients = [CoordinatorClient(address, tls=None, token="") for _ in range(agents)]
    checks: list[tuple[Any, Any]] = []
    nodes = [f"agent-{first + i:03d}" for i in range(agents)]
    try:
        await asyncio.gather(
            *(c.register_node("default", n) for c, n in zip(clients, nodes, strict=True))
        )
        if method == "health":
            checks = await asyncio.gather(*(_health_check(c) for c in clients))
        # Our start-up heap (grpc, protobuf) would be walked by every full collection in
        # the timed window: a client's pause is not the coordinator's latency.
        gc.collect()
        gc.freeze()
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the start signal (off the loop)
        lat_us: list[int] = []
        interval_s = interval_ms / 1000
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        # Spread every agent's schedule over one interval by its global index, as
        # independent hosts would be (not in step with the other client processes).
        total = max(total, first + agents)
        pacers = [_Pacer(interval_s, interval_s * (first + i) / total) for i in range(agents)]
        calls = await asyncio.gather(
            *(
                _agent(c, n, stop_at, p, lat_us)
                if method == "lease"
                else _health(checks[i][1], stop_at, p, lat_us)
                for i, (c, n, p) in enumerate(zip(clients, nodes, pacers, strict=True))
            )
        )
        elapsed = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.gather(*(channel.close() for channel, _ in checks))
    # The clients' own cost shares the coordinator's cores on one box (not on real hosts).
    cpu_s = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    switches = r1.ru_nvcsw + r1.ru_nivcsw - r0.ru_nvcsw - r0.ru_nivcsw
    return {
        "lat_us": lat_us,
        "calls": sum(calls),
        "elapsed_s": elapsed,
        "cpu_s": cpu_s,
        "switches": switches,
    }


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--total", type=int, default=0)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--method", choices=METHODS, default="lease")
    a = parser.parse_args()
    run = drive_agents(a.address, a.first, a.agents, a.seconds, a.interval_ms, a.total, a.method)
    result = uvloop.run(run)
    print(json.dumps(result), flush=True)
