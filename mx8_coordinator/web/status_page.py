"""The coordinator's status: one plain dict, its HTML page, and the same dict from a snapshot.

``status_from_view`` turns a ``JobView`` into the dict served as ``/api/status``;
``render_status_html`` draws that dict as the ``/`` page (it reloads itself every few
seconds); ``status_from_snapshot`` builds the same dict from a ``GetJobSnapshot`` reply,
so ``mx8 status --json`` and ``/api/status`` read alike. No I/O here.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from mx8_common.rpc.proto import coordinator_pb2 as pb

if TYPE_CHECKING:  # job.py imports metrics.py, which imports this module
    from mx8_coordinator.state.job import JobView

__all__ = [
    "MAX_LEASE_ROWS",
    "REFRESH_SECONDS",
    "job_state",
    "render_status_html",
    "resolving_status",
    "status_from_snapshot",
    "status_from_view",
]

#: How often the HTML page reloads itself.
REFRESH_SECONDS = 2
#: Live leases drawn on the page (the JSON keeps them all).
MAX_LEASE_ROWS = 200

_STATE_TEXT = {
    "resolving": "resolving the dataset snapshot",
    "waiting_for_nodes": "waiting for nodes to register",
    "running": "running",
    "drained": "drained: every epoch is complete",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def job_state(*, ready: bool, drained: bool) -> str:
    """``waiting_for_nodes``, ``running`` or ``drained``."""
    if drained:
        return "drained"
    return "running" if ready else "waiting_for_nodes"


def _progress(committed: list[int], total: int) -> list[dict[str, Any]]:
    return [
        {
            "epoch": epoch,
            "committed_samples": done,
            "total_samples": total,
            "fraction": (done / total) if total else 1.0,
        }
        for epoch, done in enumerate(committed)
    ]


def _rank_rows(ranks: Any) -> list[dict[str, Any]]:
    """Rank-exact mode: each trainer rank's acknowledged (epoch, step)."""
    return [
        {
            "rank": r.rank,
            "world_size": r.world_size,
            "world_id": r.world_id,
            "epoch": r.epoch,
            "step": r.step,
            "finished": r.finished,
        }
        for r in ranks
    ]


def resolving_status(job_id: str, dataset_link: str) -> dict[str, Any]:
    """The status before the snapshot is resolved (no job yet)."""
    return {
        "state": "resolving",
        "job_id": job_id,
        "dataset_link": dataset_link,
        "manifest_hash": "",
        "total_samples": 0,
        "epochs": 0,
        "world_size": 0,
        "job_ready": False,
        "job_drained": False,
        "generated_unix_ms": _now_ms(),
        "started_unix_ms": 0,
        "samples_per_second": 0.0,
        "nodes": [],
        "live_leases": [],
        "progress": [],
        "counters": {},
        "mode": "",
        "ranks": [],
    }


def status_from_view(view: JobView, *, now_unix_ms: int | None = None) -> dict[str, Any]:
    """The ``/api/status`` dict of a running job."""
    now = _now_ms() if now_unix_ms is None else now_unix_ms
    spec = view.spec
    nodes = []
    for n in view.nodes:
        seen = view.unix_ms(n.last_seen_ms)
        nodes.append(
            {
                "node_id": n.node_id,
                "hostname": n.hostname,
                "rank": n.rank,
                "alive": n.alive,
                "last_heartbeat_unix_ms": seen,
                "last_heartbeat_age_ms": max(0, now - seen),
                "samples_committed": view.samples_by_node.get(n.node_id, 0),
                "samples_delivered": n.stats.get("samples_delivered", 0),
                "bytes_fetched": n.stats.get("bytes_fetched", 0),
                "inflight_bytes": n.stats.get("inflight_bytes", 0),
            }
        )
    leases = [
        {
            "lease_id": le.lease_id,
            "node_id": le.node_id,
            "epoch": le.epoch,
            "start": le.start,
            "end": le.end,
            "cursor": le.cursor,
            "expires_in_ms": view.unix_ms(le.expires_ms) - now,
        }
        for le in view.live_leases
    ]
    c = view.counters
    return {
        "state": job_state(ready=view.ready, drained=view.drained),
        "job_id": spec.job_id,
        "dataset_link": spec.dataset_link,
        "manifest_hash": spec.manifest_hash,
        "total_samples": spec.total_samples,
        "epochs": spec.epochs,
        "world_size": view.world_size,
        "job_ready": view.ready,
        "job_drained": view.drained,
        "generated_unix_ms": now,
        "started_unix_ms": view.started_unix_ms,
        "samples_per_second": view.samples_per_second,
        "nodes": nodes,
        "live_leases": leases,
        "progress": _progress(view.committed_by_epoch, spec.total_samples),
        "counters": {
            "leases_issued": c.leases_issued,
            "leases_expired": c.leases_expired,
            "leases_requeued": c.leases_requeued,
            "leases_completed": c.leases_completed,
            "samples_committed": c.samples_committed,
        },
        "mode": spec.mode,
        "ranks": _rank_rows(view.ranks),
    }


def status_from_snapshot(snap: pb.JobSnapshot, *, now_unix_ms: int | None = None) -> dict[str, Any]:
    """The same dict as ``status_from_view``, from a ``GetJobSnapshot`` reply.

    The proto has no "no rank yet": a node before the freeze shows rank 0 with
    ``job_ready`` false.
    """
    now = _now_ms() if now_unix_ms is None else now_unix_ms
    nodes = [
        {
            "node_id": n.node_id,
            "hostname": n.hostname,
            "rank": n.rank,
            "alive": n.alive,
            "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
            "last_heartbeat_age_ms": max(0, now - n.last_heartbeat_unix_ms),
            "samples_committed": n.samples_committed,
            "samples_delivered": n.stats.samples_delivered,
            "bytes_fetched": n.stats.bytes_fetched,
            "inflight_bytes": n.stats.inflight_bytes,
        }
        for n in snap.nodes
    ]
    leases = [
        {
            "lease_id": le.lease_id,
            "node_id": le.node_id,
            "epoch": le.range.epoch,
            "start": le.range.start_id,
            "end": le.range.end_id,
            "cursor": le.cursor,
            "expires_in_ms": le.expires_unix_ms - now,
        }
        for le in snap.live_leases
    ]
    c = snap.counters
    return {
        "state": job_state(ready=snap.job_ready, drained=snap.job_drained),
        "job_id": snap.job_id,
        "dataset_link": snap.dataset_link,
        "manifest_hash": snap.manifest_hash,
        "total_samples": snap.total_samples,
        "epochs": snap.epochs,
        "world_size": snap.world_size,
        "job_ready": snap.job_ready,
        "job_drained": snap.job_drained,
        "generated_unix_ms": now,
        "started_unix_ms": snap.started_unix_ms,
        "samples_per_second": snap.samples_per_second,
        "nodes": nodes,
        "live_leases": leases,
        "progress": _progress(
            [p.committed_samples for p in sorted(snap.progress, key=lambda p: p.epoch)],
            snap.total_samples,
        ),
        "counters": {
            "leases_issued": c.leases_issued,
            "leases_expired": c.leases_expired,
            "leases_requeued": c.leases_requeued,
            "leases_completed": c.leases_completed,
            "samples_committed": c.samples_committed,
        },
        "mode": snap.mode,
        "ranks": _rank_rows(snap.ranks),
    }


# -- HTML --------------------------------------------------------------------------------

_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.dead{color:#b00}.alive{color:#070}code{font-size:12px}
progress{width:18em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _age(ms: int) -> str:
    return f"{ms / 1000:.1f} s ago"


def _summary(s: dict[str, Any]) -> list[str]:
    rows = [
        ("job", s["job_id"]),
        ("mode", s.get("mode", "")),
        ("state", _STATE_TEXT.get(s["state"], s["state"])),
        ("dataset", s["dataset_link"]),
        ("snapshot hash", s["manifest_hash"] or "(resolving)"),
        ("samples", f"{s['total_samples']:,}"),
        ("world size", s["world_size"]),
        ("epochs", s["epochs"]),
        ("throughput", f"{s['samples_per_second']:,.1f} samples/s (since start)"),
    ]
    rows += [(k.replace("_", " "), f"{v:,}") for k, v in s["counters"].items()]
    out = ['<table id="summary">']
    for key, value in rows:
        out.append(f'<tr><th>{_e(key)}</th><td data-key="{_e(key)}">{_e(value)}</td></tr>')
    out.append("</table>")
    return out


def _progress_table(s: dict[str, Any]) -> list[str]:
    out = [
        '<h2>Progress</h2><table id="progress">',
        "<tr><th>epoch</th><th>committed</th><th></th><th>done</th></tr>",
    ]
    for p in s["progress"]:
        pct = 100.0 * p["fraction"]
        out.append(
            f'<tr class="epoch" data-epoch="{p["epoch"]}"><td class="num">{p["epoch"]}</td>'
            f'<td class="num">{p["committed_samples"]:,} / {p["total_samples"]:,}</td>'
            f'<td><progress max="{max(1, p["total_samples"])}" '
            f'value="{p["committed_samples"]}"></progress></td>'
            f'<td class="num">{pct:.1f}%</td></tr>'
        )
    out.append("</table>")
    return out


def _nodes_table(s: dict[str, Any]) -> list[str]:
    out = [
        '<h2>Nodes</h2><table id="nodes">',
        "<tr><th>rank</th><th>node</th><th>host</th><th>state</th><th>last heartbeat</th>"
        "<th>committed</th><th>delivered</th><th>bytes fetched</th><th>in flight</th></tr>",
    ]
    for n in s["nodes"]:
        alive = "alive" if n["alive"] else "dead"
        rank = "-" if n["rank"] is None else n["rank"]
        out.append(
            f'<tr class="node" data-node-id="{_e(n["node_id"])}"><td class="num">{rank}</td>'
            f"<td>{_e(n['node_id'])}</td><td>{_e(n['hostname'])}</td>"
            f'<td class="{alive}">{"alive" if n["alive"] else "departed"}</td>'
            f"<td>{_age(n['last_heartbeat_age_ms'])}</td>"
            f'<td class="num">{n["samples_committed"]:,}</td>'
            f'<td class="num">{n["samples_delivered"]:,}</td>'
            f'<td class="num">{n["bytes_fetched"]:,}</td>'
            f'<td class="num">{n["inflight_bytes"]:,}</td></tr>'
        )
    if not s["nodes"]:
        out.append('<tr><td colspan="9">no node has registered yet</td></tr>')
    out.append("</table>")
    return out


def _ranks_table(s: dict[str, Any]) -> list[str]:
    ranks = s.get("ranks") or []
    if not ranks:
        return []
    out = [
        '<h2>Trainer ranks</h2><table id="ranks">',
        "<tr><th>rank</th><th>world</th><th>epoch</th><th>step</th><th>finished</th></tr>",
    ]
    for r in ranks:
        out.append(
            f'<tr class="rank"><td class="num">{r["rank"]}</td>'
            f"<td>{r['world_size']} ({_e(r['world_id'])})</td>"
            f'<td class="num">{r["epoch"]}</td><td class="num">{r["step"]}</td>'
            f"<td>{'yes' if r['finished'] else 'no'}</td></tr>"
        )
    out.append("</table>")
    return out


def _leases_table(s: dict[str, Any]) -> list[str]:
    leases = s["live_leases"]
    out = [
        f'<h2>Live leases ({len(leases)})</h2><table id="leases">',
        "<tr><th>lease</th><th>node</th><th>epoch</th><th>range</th><th>cursor</th>"
        "<th>expires in</th></tr>",
    ]
    for le in leases[:MAX_LEASE_ROWS]:
        out.append(
            f'<tr class="lease"><td>{_e(le["lease_id"])}</td><td>{_e(le["node_id"])}</td>'
            f'<td class="num">{le["epoch"]}</td>'
            f'<td class="num">[{le["start"]:,}, {le["end"]:,})</td>'
            f'<td class="num">{le["cursor"]:,}</td>'
            f'<td class="num">{le["expires_in_ms"] / 1000:.1f} s</td></tr>'
        )
    if len(leases) > MAX_LEASE_ROWS:
        out.append(
            f'<tr><td colspan="6">{len(leases) - MAX_LEASE_ROWS} more in /api/status</td></tr>'
        )
    out.append("</table>")
    return out


def render_status_html(status: dict[str, Any]) -> str:
    """The ``/`` page: job, snapshot hash, progress per epoch, nodes and live leases."""
    title = f"mx8 job {status['job_id']}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # A plain reload keeps the page working without JavaScript (and in --dump-dom).
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        *_summary(status),
        *_progress_table(status),
        *_nodes_table(status),
        *_ranks_table(status),
        *_leases_table(status),
        f'<p><small>refreshes every {REFRESH_SECONDS} s · <a href="/api/status">JSON</a> · '
        '<a href="/metrics">Prometheus metrics</a></small></p>',
        "</body></html>",
    ]
    return "\n".join(parts)
