"""Client CPU per 64 KiB sample: ``mx8.load`` (whole loader) vs raw native-client GETs.

Issue 19's acceptance row: in the same run, alternating, ``mx8.load`` over the local S3
server must cost at most 1.2x the client CPU per sample of raw concurrent GETs through the
native client it uses (obstore: ``get_async`` then ``bytes_async``, the usual GET), and
deliver at least 1.0x their samples/s. Beside it, reported: ``mx8.load`` against raw
one-call ranged GETs (``get_range_async``, the call mx8 itself makes for a sample of known
size, so the loader's own cost above the client shows), and the raw clients compared (the
CRT client, mx8's botocore path, aioboto3) and ``mx8.load`` on the botocore path, each
against raw obstore GETs. The box's load average is in the note: these
are CPU times, less noisy than rates on a shared box, but not free of it.
"""

from __future__ import annotations

import os
import statistics

from benchmarks.bench_env import BenchEnv
from benchmarks.client_cpu import crt_skip_reason, mx8_load_cpu, raw_gets_cpu
from benchmarks.report import Row

__all__ = ["run"]

CASE = "client_cpu"
CONCURRENCY = 32
KiB = 1024
SIZE = 64 * KiB
CPU_TARGET = 1.2  # mx8.load may cost at most this many times raw GETs' CPU per sample


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load avg {one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} CPUs"


def _measure_side(
    side: str,
    bucket: str,
    keys: list[str],
    link: str,
    count: int,
    rate: dict[str, list[float]],
    cpu: dict[str, list[float]],
) -> None:
    if side.startswith("raw "):
        r, c = raw_gets_cpu(side[4:], bucket, keys, concurrency=CONCURRENCY, size=SIZE)
    else:
        native = side == "mx8 native"
        r, c = mx8_load_cpu(link, concurrency=CONCURRENCY, expect=count, native=native)
    rate[side].append(r)
    cpu[side].append(c)


def run(env: BenchEnv) -> list[Row]:
    # moto: the dataset data_plane_s3 uploads (600 GETs take it ~1.5 s). A faster server
    # reads 600 in ~0.2 s, too short a measurement on a busy 2-vCPU box: 2,400 there.
    count = env.size(96, 600 if env.s3.kind == "moto" else 2400)
    bucket, prefix, keys = env.s3_dataset(count, SIZE)
    link = f"s3://{bucket}/{prefix}"
    clients = ["obstore", "obstore-range", "lean", "aioboto3"]
    clients += [] if crt_skip_reason() else ["crt"]
    sides = [*(f"raw {c}" for c in clients), "mx8 native", "mx8 botocore"]
    rate: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    # Warm-ups: the snapshot, each client's setup (models, stores, connections); the
    # target row's two sides last (see the other clients below).
    mx8_load_cpu(link, concurrency=CONCURRENCY, expect=count, native=False)
    for client in reversed(clients):
        raw_gets_cpu(client, bucket, keys[:32], concurrency=CONCURRENCY, size=SIZE)
    mx8_load_cpu(link, concurrency=CONCURRENCY, expect=count)
    load_before = _load()
    # The target rows' two sides get more rounds than the others: one 600-GET measurement
    # is ~0.3 s of CPU, and a stray wake-up of the box moves one by 30-70 % (seen on both
    # sides in two full runs); a median of 11 is not moved by four such (with 7, one run's
    # samples/s read 0.93x and the case alone right after 1.06x).
    pairs = env.repeats if env.quick else max(env.repeats, 11)
    # With them, the one-call GETs mx8.load is also compared with: the box's speed drifts
    # over a run, so sides compared with each other are measured next to each other.
    key = ["raw obstore", "mx8 native", "raw obstore-range"]
    for repeat in range(pairs):
        # The target row's sides next to each other, in one order then the other; each
        # measurement starts from an idle process (client_cpu.settle).
        for side in key if repeat % 2 == 0 else key[::-1]:
            _measure_side(side, bucket, keys, link, count, rate, cpu)
    # The other clients after the target pairs: the side measured right after the CRT
    # client (its runtime and connections outlive it) cost 1.5-1.8x its usual CPU.
    others = [s for s in sides if s not in key]
    for _ in range(env.repeats):
        for side in others:
            _measure_side(side, bucket, keys, link, count, rate, cpu)
    load = f"{load_before} before, {_load()} after"
    med = {s: statistics.median(cpu[s]) for s in sides}
    what = f"64 KiB x {count}, c={CONCURRENCY} ({env.s3.kind})"
    rows = [
        Row(
            CASE,
            f"client CPU/sample, mx8.load (whole loader) {what}",
            "ms CPU",
            med["mx8 native"],
            med["raw obstore"],
            "raw obstore GETs",
            target=1 / CPU_TARGET,
            higher_is_better=False,
            samples=cpu["mx8 native"],
            baseline_samples=cpu["raw obstore"],
            note=f"mx8/raw = {med['mx8 native'] / med['raw obstore']:.2f}x "
            f"(target <= {CPU_TARGET}x); {load}",
        ),
        Row(
            CASE,
            f"samples/s, mx8.load {what}",
            "samples/s",
            statistics.median(rate["mx8 native"]),
            statistics.median(rate["raw obstore"]),
            "raw obstore GETs",
            target=1.0,
            samples=rate["mx8 native"],
            baseline_samples=rate["raw obstore"],
        ),
    ]
    one_call = "raw obstore one-call ranged GETs (get_range_async)"
    rows.append(
        Row(
            CASE,
            f"client CPU/sample, mx8.load vs {one_call}, {what}",
            "ms CPU",
            med["mx8 native"],
            med["raw obstore-range"],
            one_call,
            higher_is_better=False,
            samples=cpu["mx8 native"],
            baseline_samples=cpu["raw obstore-range"],
            note=f"the loader's own cost above the call it makes: "
            f"{med['mx8 native'] / med['raw obstore-range']:.2f}x; {one_call}: "
            f"{statistics.median(rate['raw obstore-range']):,.0f} samples/s",
        )
    )
    others = {
        "raw crt": "raw CRT GETs (s3torchconnectorclient)",
        "raw lean": "raw botocore-path GETs (s3_get)",
        "raw aioboto3": "raw aioboto3 GETs",
        "mx8 botocore": "mx8.load, botocore path",
    }
    for side, name in others.items():
        if side not in med:
            continue
        rows.append(
            Row(
                CASE,
                f"client CPU/sample, raw obstore GETs vs {name}, {what}",
                "ms CPU",
                med["raw obstore"],
                med[side],
                name,
                higher_is_better=False,
                samples=cpu["raw obstore"],
                baseline_samples=cpu[side],
                note=f"{name}: {statistics.median(rate[side]):,.0f} samples/s",
            )
        )
    if crt_skip_reason():
        rows[-1].note += f"; CRT not measured: {crt_skip_reason()}"
    return rows
