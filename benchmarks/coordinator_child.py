"""A coordinator in its own process for the benchmarks (its CPU apart from the clients').

``python -m benchmarks.coordinator_child MANIFEST [--world-size N] [--block-size B]
[--state-dir DIR] [--log-file FILE] [--metrics HOST:PORT]`` serves the manifest file on
127.0.0.1 port 0, prints ``{"address", "manifest_hash", "total_samples"}`` as one JSON
line, and shuts down when its stdin closes. ``--state-dir`` turns the fsync'd lease log
on, as in production; ``--metrics`` serves ``/metrics``. Events are JSON lines at
``MX8_LOG_LEVEL`` (``serve_coordinator``'s ``log_level``), written to ``--log-file`` when
given (as a daemon's stderr would be collected), else to stderr. With
``MX8_BENCH_DIAG=FILE`` it writes, when it stops, what the serving cost beyond time (load
independent): GC passes per generation with their CPU, context switches per thread,
fsyncs of the lease log, tracked and frozen objects. With
``MX8_BENCH_PROFILE=FILE`` it runs under cProfile and writes the stats to FILE.
``serve_coordinator(...)`` runs it from the parent as a context manager.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["serve_coordinator"]


@contextlib.contextmanager
def serve_coordinator(
    manifest: Path, *, log_level: str = "warning", **options: Any
) -> Iterator[dict[str, Any]]:
    """Start the child, yield what it printed, and stop it (stdin close, then kill).

    ``options`` become flags (``state_dir=...`` -> ``--state-dir ...``).
    """
    args = [str(manifest)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "MX8_LOG_LEVEL": log_level},
    )
    try:
        assert proc.stdout is not None
        while True:  # log lines may come first; ours is the JSON object with "address"
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark coordinator exited ({proc.wait()}) before serving")
            if line.startswith(b'{"address"'):
                yield json.loads(line)
                break
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _serve(args: argparse.Namespace) -> None:
    from mx8_coordinator.config import CoordinatorConfig
    from mx8_coordinator.rpc.manifest_serving import FileManifestSource
    from mx8_coordinator.server import Coordinator

    source = await FileManifestSource.open(args.manifest)
    config = CoordinatorConfig(
        dataset=str(args.manifest),
        state_dir=args.state_dir,
        listen="127.0.0.1:0",
        world_size=args.world_size,
        block_size=args.block_size,
        epochs=args.epochs,
        lease_ttl_ms=60_000,
        heartbeat_interval_ms=10_000,
        metrics=args.metrics,
        mode="dynamic",  # the benchmark clients take leases
        manifest_stream_compression=args.manifest_stream_compression,
    )
    # As mx8-coordinator does: the process is the coordinator's, its start-up heap frozen.
    async with Coordinator(config, source=source, freeze_heap=True) as coordinator:
        diag = _Diagnostics.start() if os.environ.get("MX8_BENCH_DIAG") else None
        info = {
            "address": coordinator.address,
            "manifest_hash": source.manifest_hash,
            "total_samples": source.total_samples,
            "pid": os.getpid(),
        }
        _ANNOUNCE.write(json.dumps(info) + "\n")
        _ANNOUNCE.flush()
        # Serve until the parent closes our stdin (read off the loop: never block it).
        await asyncio.to_thread(sys.stdin.read)
        if diag is not None:
            diag.write(os.environ["MX8_BENCH_DIAG"], coordinator)


def _thread_switches() -> dict[str, list[int]]:
    """Per OS thread (by name): voluntary and involuntary context switches so far."""
    out: dict[str, list[int]] = {}
    py_names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in os.listdir("/proc/self/task"):
        base = f"/proc/self/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                name = py_names.get(int(tid)) or f.read().strip()
            with open(f"{base}/status") as f:
                fields = dict(line.split(":", 1) for line in f if "ctxt_switches" in line)
        except OSError:
            continue
        counts = [int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])]
        prev = out.get(name, [0, 0])
        out[name] = [prev[0] + counts[0], prev[1] + counts[1]]
    return out


class _Diagnostics:
    """GC pauses, context switches and threads of this process while it serves."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t0 = 0.0
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._gen = 0
        self._threads0 = _thread_switches()

    @classmethod
    def start(cls) -> _Diagnostics:
        diag = cls()
        gc.callbacks.append(diag._on_gc)
        return diag

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
            self._gen = info["generation"]
        else:
            self.pauses[self._gen].append((time.thread_time() - self._t0) * 1e3)

    def write(self, path: str, coordinator: Any) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        log = getattr(coordinator, "_log", None)
        out = {
            "gc": {
                str(g): {"n": len(v), "cpu_ms_total": sum(v), "cpu_ms_max": max(v, default=0.0)}
                for g, v in self.pauses.items()
            },
            "gc_freeze_count": gc.get_freeze_count(),
            "gc_tracked_objects": len(gc.get_objects()),
            "gc_threshold": gc.get_threshold(),
            "nvcsw": r.ru_nvcsw - self._r0.ru_nvcsw,
            "nivcsw": r.ru_nivcsw - self._r0.ru_nivcsw,
            "cpu_s": r.ru_utime + r.ru_stime - self._r0.ru_utime - self._r0.ru_stime,
            "threads": [t.name for t in threading.enumerate()],
            "os_threads": len(os.listdir("/proc/self/task")),
            "fsyncs": getattr(log, "fsyncs", None),
            "per_thread": {
                k: [now - was for now, was in zip(v, self._threads0.get(k, [0, 0]), strict=True)]
                for k, v in _thread_switches().items()
            },
        }
        with open(path, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    import uvloop

    # Our stdout is a pipe the parent reads once: keep only the announcement on it and send
    # mx8's event lines to /dev/null, or a full pipe would block the coordinator's loop.
    _ANNOUNCE = os.fdopen(os.dup(1), "w")
    _null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_null, 1)

    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=65536)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--log-file", default=None)
    parser.add_argument("--metrics", default=None, help="HOST:PORT of /metrics")
    parser.add_argument("--manifest-stream-compression", default="zlib")
    parsed = parser.parse_args()
    if parsed.log_file:
        _log = os.open(parsed.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(_log, 2)
    from mx8_common.obs.events import configure_logging

    # As mx8-coordinator's main() does: the level comes from MX8_LOG_LEVEL.
    configure_logging(fmt="json")
    profile_to = os.environ.get("MX8_BENCH_PROFILE")  # cProfile stats file, for RESULTS.md
    if profile_to:
        import cProfile

        with cProfile.Profile() as profiler:
            uvloop.run(_serve(parsed))
        profiler.dump_stats(profile_to)
    else:
        uvloop.run(_serve(parsed))
