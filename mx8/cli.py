"""Entry point of ``mx8``: the operator CLI.

``mx8 status --coordinator ADDR [--json]`` shows a job as the coordinator sees it (the
``JobStatus`` its ``GetJobSnapshot`` reply carries; ``--json`` prints the same dict as the
status page's ``/api/status``); ``mx8 health ADDR`` (gRPC health) or
``mx8 health --http URL`` is a probe for containers and scripts: exit 0 when healthy.
TLS and the bearer token come from ``MX8_TLS_CA`` / ``MX8_TLS_CERT`` / ``MX8_TLS_KEY`` and
``MX8_AUTH_TOKEN``, like every mx8 client. Exit codes: 0 fine, 1 unhealthy, 2 error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mx8_common.rpc.job_status import JobStatus

from mx8_common.rpc.client_config import DEFAULT_COORDINATOR_URL, CoordinatorClientConfig

__all__ = ["build_parser", "main", "print_status"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mx8`` argument parser (deploy-file tests check commands against it)."""
    parser = argparse.ArgumentParser(prog="mx8", description="the mx8 operator CLI")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="show a job: nodes, progress, leases, throughput")
    status.add_argument(
        "--coordinator",
        default=None,
        help=f"coordinator HOST:PORT [env MX8_COORDINATOR_URL; default {DEFAULT_COORDINATOR_URL}]",
    )
    status.add_argument("--job-id", default="", help="refuse if the coordinator serves another")
    status.add_argument("--json", action="store_true", help="print the status dict as JSON")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    health = sub.add_parser("health", help="probe a daemon; exit 0 when it is healthy")
    target = health.add_mutually_exclusive_group(required=True)
    target.add_argument("address", nargs="?", help="gRPC HOST:PORT or unix:PATH")
    target.add_argument("--http", metavar="URL", help="an HTTP URL that must answer 200")
    health.add_argument("--service", default="", help="gRPC health service name ('' = server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (5)")
    return parser


# -- status ------------------------------------------------------------------------------


async def _fetch_status(address: str, job_id: str, timeout_s: float) -> JobStatus:
    from mx8_common.rpc.coordinator_client import CoordinatorClient
    from mx8_common.rpc.job_status_proto import job_status_from_proto

    async with CoordinatorClient(address, timeout_s=timeout_s) as client:
        return job_status_from_proto(await client.get_job_snapshot(job_id))


#: A node that left after the job drained finished; only a silent one during the job is lost.
_NODE_STATE_MARKUP = {
    "alive": "[green]alive[/]",
    "finished": "[dim]finished[/]",
    "lost": "[red]lost[/]",
}


def _rate_basis(status: dict[str, Any]) -> str:
    if status["rate_basis"] == "window":
        return f"last {status['rate_window_ms'] / 1000:.0f} s"
    return "whole run, final" if status["rate_basis"] == "final" else "since start"


def print_status(job: JobStatus, *, file: Any = None) -> None:
    """Draw a job's status as rich tables."""
    from rich.console import Console
    from rich.table import Table

    status = job.to_dict()
    out = file or sys.stdout
    # A pipe or a file gets a fixed width, so long hashes are not wrapped into pieces.
    console = Console(file=out, width=None if out.isatty() else 120)
    summary = Table(show_header=False, title=f"mx8 job {status['job_id']}", title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    for key, value in (
        ("state", status["state"]),
        ("dataset", status["dataset_link"]),
        ("snapshot hash", status["manifest_hash"]),
        ("samples", f"{status['total_samples']:,}"),
        ("world size", str(status["world_size"])),
        ("throughput", f"{status['samples_per_second']:,.1f} samples/s ({_rate_basis(status)})"),
        *((k.replace("_", " "), f"{v:,}") for k, v in status["counters"].items()),
        # With the lease log in a store: who leads the job, in which term.
        *(
            [("leader", status["leader"]), ("leader term", str(status["leader_term"]))]
            if status.get("leader_term")
            else []
        ),
    ):
        summary.add_row(key, value)
    console.print(summary)

    progress = Table(title="progress", title_justify="left")
    for col in ("epoch", "committed", "total", "done"):
        progress.add_column(col, justify="right")
    for p in status["progress"]:
        progress.add_row(
            str(p["epoch"]),
            f"{p['committed_samples']:,}",
            f"{p['total_samples']:,}",
            f"{100 * p['fraction']:.1f}%",
        )
    console.print(progress)

    nodes = Table(title="nodes", title_justify="left")
    for col in ("rank", "node", "host", "state", "last heartbeat", "committed", "delivered"):
        nodes.add_column(
            col, justify="right" if col in ("rank", "committed", "delivered") else "left"
        )
    for n in status["nodes"]:
        nodes.add_row(
            "-" if n["rank"] is None else str(n["rank"]),
            n["node_id"],
            n["hostname"],
            _NODE_STATE_MARKUP[n["state"]],
            f"{n['last_heartbeat_age_ms'] / 1000:.1f} s ago",
            f"{n['samples_committed']:,}",
            f"{n['samples_delivered']:,}",
        )
    console.print(nodes)
    console.print(f"live leases: {len(status['live_leases'])}")


def _status(args: argparse.Namespace) -> int:
    from mx8_common.errors import Mx8Error

    try:
        address = args.coordinator or CoordinatorClientConfig.from_env().address
        status = asyncio.run(_fetch_status(address, args.job_id, args.timeout))
    except Mx8Error as exc:
        print(f"mx8 status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status.to_dict(), indent=1))
    else:
        print_status(status)
    return 0


# -- health ------------------------------------------------------------------------------


async def _grpc_health(address: str, service: str, timeout_s: float) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mx8_common.rpc.channels import aio_channel
    from mx8_common.rpc.security import TlsConfig

    # MX8_TLS_* are the coordinator's; a unix: address is a local agent socket.
    tls = TlsConfig() if address.startswith("unix:") else CoordinatorClientConfig.from_env().tls
    async with aio_channel(address, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _health(args: argparse.Namespace) -> int:
    if args.http:
        try:
            with urllib.request.urlopen(args.http, timeout=args.timeout) as r:
                print(f"{args.http}: HTTP {r.status}")
                return 0 if r.status == 200 else 1
        except (urllib.error.URLError, OSError) as exc:
            print(f"mx8 health: {args.http} did not answer: {exc}", file=sys.stderr)
            return 1
    import grpc

    from mx8_common.errors import Mx8Error

    try:
        state = asyncio.run(_grpc_health(args.address, args.service, args.timeout))
    except Mx8Error as exc:
        print(f"mx8 health: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(
            f"mx8 health: {args.address} health check failed: {exc.code().name}: {exc.details()}",
            file=sys.stderr,
        )
        return 1
    print(f"{args.address}: {state}")
    return 0 if state == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    """Run one ``mx8`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return _status(args)
    return _health(args)


if __name__ == "__main__":
    raise SystemExit(main())
