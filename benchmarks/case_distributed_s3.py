"""Agent CPU per sample over S3: the native client (obstore) vs the botocore path.

Issue 19's acceptance row "the distributed path uses the same reader": the agent's CPU per
sample must drop by about the factor the embedded client's does. Same set-up as
``distributed`` (a real coordinator with the ``s3://`` link as ``--dataset``, one agent,
2 trainer processes; start-up left out), over the local S3 server's 64 KiB objects. Each
repeat runs four epochs, the two clients alternating (``MX8_FETCH_NATIVE_S3_GET`` given to
every process): distributed, then embedded (2 ranks, ``mx8.load(link, rank=r,
world_size=2)``). Agent CPU is psutil's on the agent process between "go" and the end;
embedded client CPU is both trainers' over their loops.
"""

from __future__ import annotations

import os
import statistics

from benchmarks.bench_env import BenchEnv
from benchmarks.case_distributed import epoch
from benchmarks.report import Row

__all__ = ["run"]

CASE = "distributed_s3"
KiB = 1024
_CLIENTS = {"native": "1", "botocore": "0"}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load avg {one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} CPUs"


def run(env: BenchEnv) -> list[Row]:
    count = env.size(96, 600)  # the dataset data_plane_s3 and client_cpu read (shared)
    bucket, prefix, _ = env.s3_dataset(count, 64 * KiB)
    link = f"s3://{bucket}/{prefix}"
    # ms CPU per sample, per client: the agent's, the distributed trainers', embedded's.
    agent: dict[str, list[float]] = {c: [] for c in _CLIENTS}
    dist_trainers: dict[str, list[float]] = {c: [] for c in _CLIENTS}
    embedded: dict[str, list[float]] = {c: [] for c in _CLIENTS}
    rates: dict[str, list[float]] = {c: [] for c in _CLIENTS}
    load_before = _load()
    for repeat in range(env.repeats):
        order = list(_CLIENTS) if repeat % 2 == 0 else list(reversed(_CLIENTS))
        for client in order:
            extra = {"MX8_FETCH_NATIVE_S3_GET": _CLIENTS[client]}
            dist = epoch(env, link, count, distributed=True, extra_env=extra)
            agent[client].append(dist.daemon_cpu[1] / dist.samples * 1e3)
            dist_trainers[client].append(dist.trainer_cpu / dist.samples * 1e3)
            rates[client].append(dist.rate)
            emb = epoch(env, link, count, distributed=False, extra_env=extra)
            embedded[client].append(emb.trainer_cpu / emb.samples * 1e3)
            print(
                f"   repeat {repeat} {client}: agent {agent[client][-1]:.3f} ms/sample, "
                f"distributed trainers {dist_trainers[client][-1]:.3f}, "
                f"embedded {embedded[client][-1]:.3f}, {dist.rate:,.0f} samples/s distributed",
                flush=True,
            )
    load = f"{load_before} before, {_load()} after"
    med = {
        name: {c: statistics.median(v[c]) for c in _CLIENTS}
        for name, v in (("agent", agent), ("embedded", embedded))
    }
    agent_ratio = med["agent"]["native"] / med["agent"]["botocore"]
    emb_ratio = med["embedded"]["native"] / med["embedded"]["botocore"]
    what = f"2 ranks, 64 KiB x {count} ({env.s3.kind})"
    return [
        Row(
            CASE,
            f"agent process CPU/sample, distributed (coordinator + agent + 2 trainers), {what}",
            "ms CPU",
            med["agent"]["native"],
            med["agent"]["botocore"],
            "agent on the botocore path",
            higher_is_better=False,
            samples=agent["native"],
            baseline_samples=agent["botocore"],
            note=f"native/botocore: agent {agent_ratio:.2f}x, embedded {emb_ratio:.2f}x; {load}",
        ),
        Row(
            CASE,
            f"embedded client CPU/sample (2 trainers), {what}",
            "ms CPU",
            med["embedded"]["native"],
            med["embedded"]["botocore"],
            "embedded on the botocore path",
            higher_is_better=False,
            samples=embedded["native"],
            baseline_samples=embedded["botocore"],
        ),
        Row(
            CASE,
            f"distributed trainers' CPU/sample (gRPC clients), {what}",
            "ms CPU",
            statistics.median(dist_trainers["native"]),
            statistics.median(dist_trainers["botocore"]),
            "same, agent on the botocore path",
            higher_is_better=False,
            samples=dist_trainers["native"],
            baseline_samples=dist_trainers["botocore"],
            note=f"samples/s distributed: native {statistics.median(rates['native']):,.0f}, "
            f"botocore {statistics.median(rates['botocore']):,.0f}",
        ),
    ]
