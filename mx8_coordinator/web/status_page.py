"""The coordinator's HTML status page, drawn from a ``JobStatus`` (it reloads itself).

The page shows the same dict that ``/api/status`` serves (``JobStatus.to_dict``). No I/O.
"""

from __future__ import annotations

import html
from typing import Any

from mx8_common.rpc.job_status import JobStatus
from mx8_coordinator.web.status_format import human_bytes, human_duration, throughput_svg

__all__ = ["MAX_LEASE_ROWS", "REFRESH_SECONDS", "render_status_html"]

#: How often the HTML page reloads itself.
REFRESH_SECONDS = 2
#: Live leases drawn on the page (the JSON keeps them all).
MAX_LEASE_ROWS = 200

_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.dead,.lost{color:#b00}.alive{color:#070}.finished{color:#555}code{font-size:12px}
.legend{color:#555;max-width:60em}.legend dt{font-weight:600;float:left;clear:left;width:9em}
.legend dd{margin:0 0 .2em 9.5em}
progress{width:18em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _age(ms: int) -> str:
    return f"{ms / 1000:.1f} s ago"


def _summary(s: dict[str, Any], state_text: str) -> list[str]:
    rows = [
        ("job", s["job_id"]),
        ("mode", s.get("mode") or "-"),
        ("state", state_text),
        ("dataset", s["dataset_link"]),
        ("snapshot hash", s["manifest_hash"] or "(resolving)"),
        ("samples", f"{s['total_samples']:,}"),
        ("world size", s["world_size"]),
        ("epochs", s["epochs"]),
        ("throughput", _throughput_text(s)),
    ]
    if s.get("leader_term"):
        rows += [("leader", s["leader"]), ("leader term", s["leader_term"])]
    rows += [(k.replace("_", " "), f"{v:,}") for k, v in s["counters"].items()]
    out = ['<table id="summary">']
    for key, value in rows:
        out.append(f'<tr><th>{_e(key)}</th><td data-key="{_e(key)}">{_e(value)}</td></tr>')
    out.append("</table>")
    return out


def _throughput_text(s: dict[str, Any]) -> str:
    rate = f"{s['samples_per_second']:,.1f} samples/s"
    basis = s.get("rate_basis", "since_start")
    if basis == "window":
        return f"{rate} (last {s['rate_window_ms'] / 1000:.0f} s)"
    if basis == "final":
        return f"{rate} (average of the whole run, final)"
    return f"{rate} (since start)"


_NODE_STATE_TEXT = {
    "alive": "alive",
    "finished": "finished (left after the job drained)",
    "lost": "lost (silent past the lease TTL)",
}

#: Column -> what it counts, shown as a legend under the nodes table and as tooltips.
_NODE_COLUMNS = {
    "committed": "sample positions the coordinator recorded as done for this node: "
    "the job's progress, what a restart resumes from",
    "delivered": "samples the node's trainers acknowledged, as last reported by its "
    "heartbeat; it trails committed by up to a heartbeat, and counts only since "
    "the agent started",
    "rate": "committed samples/s over the recent window",
    "fetched": "bytes read from storage by the node",
    "in flight": "bytes fetched but not yet acknowledged by a trainer",
    "retries": "storage reads the node retried (throttling, resets, short bodies)",
}


def _activity(s: dict[str, Any]) -> list[str]:
    """The throughput chart and the retry/error counts operators look at first."""
    c = s["counters"]
    states = s.get("nodes_by_state", {})
    rows = [
        ("leases expired", c["leases_expired"], "leases whose node went silent past the TTL"),
        (
            "ranges retried",
            c["leases_requeued"],
            "unfinished lease remainders handed to another node",
        ),
        ("nodes lost", states.get("lost", 0), "nodes silent past the TTL before the job drained"),
        (
            "storage reads retried",
            sum(n.get("fetch_retries", 0) for n in s["nodes"]),
            "reads the agents retried (throttling, resets, short bodies), per node below",
        ),
    ]
    points = [(p["unix_ms"], p["samples_per_second"]) for p in s.get("throughput_history", [])]
    out = [
        "<h2>Throughput</h2>",
        throughput_svg(points),
        '<h2>Retries and errors</h2><table id="errors">',
    ]
    for name, value, doc in rows:
        cls = "num lost" if value else "num"
        out.append(
            f'<tr><th title="{_e(doc)}">{_e(name)}</th>'
            f'<td class="{cls}" data-key="{_e(name)}">{value:,}</td></tr>'
        )
    out.append("</table>")
    return out


def _progress_table(s: dict[str, Any]) -> list[str]:
    out = [
        '<h2>Progress</h2><table id="progress">',
        "<tr><th>epoch</th><th>committed</th><th></th><th>done</th>"
        '<th title="at the current rate, after the epochs before it">ETA</th></tr>',
    ]
    for p in s["progress"]:
        pct = 100.0 * p["fraction"]
        out.append(
            f'<tr class="epoch" data-epoch="{p["epoch"]}"><td class="num">{p["epoch"]}</td>'
            f'<td class="num">{p["committed_samples"]:,} / {p["total_samples"]:,}</td>'
            f'<td><progress max="{max(1, p["total_samples"])}" '
            f'value="{p["committed_samples"]}"></progress></td>'
            f'<td class="num">{pct:.1f}%</td>'
            f'<td class="num eta">{human_duration(p.get("eta_seconds"))}</td></tr>'
        )
    out.append("</table>")
    return out


def _th(name: str) -> str:
    doc = _NODE_COLUMNS.get(name)
    return f'<th title="{_e(doc)}">{_e(name)}</th>' if doc else f"<th>{_e(name)}</th>"


def _nodes_table(s: dict[str, Any]) -> list[str]:
    heads = ("rank", "node", "host", "state", "last heartbeat", *_NODE_COLUMNS)
    out = [
        '<h2>Nodes</h2><table id="nodes">',
        "<tr>" + "".join(_th(h) for h in heads) + "</tr>",
    ]
    for n in s["nodes"]:
        state = n.get("state") or ("alive" if n["alive"] else "lost")
        rank = "-" if n["rank"] is None else n["rank"]
        out.append(
            f'<tr class="node" data-node-id="{_e(n["node_id"])}"><td class="num">{rank}</td>'
            f"<td>{_e(n['node_id'])}</td><td>{_e(n['hostname'])}</td>"
            f'<td class="{state}" data-state="{state}">{_e(_NODE_STATE_TEXT[state])}</td>'
            f"<td>{_age(n['last_heartbeat_age_ms'])}</td>"
            f'<td class="num">{n["samples_committed"]:,}</td>'
            f'<td class="num">{n["samples_delivered"]:,}</td>'
            f'<td class="num">{n.get("samples_per_second", 0.0):,.1f}/s</td>'
            f'<td class="num">{human_bytes(n["bytes_fetched"])}</td>'
            f'<td class="num">{human_bytes(n["inflight_bytes"])}</td>'
            f'<td class="num">{n.get("fetch_retries", 0):,}</td></tr>'
        )
    if not s["nodes"]:
        out.append(f'<tr><td colspan="{len(heads)}">no node has registered yet</td></tr>')
    out.append("</table>")
    out.append('<dl class="legend" id="legend">')
    for name, doc in _NODE_COLUMNS.items():
        out.append(f"<dt>{_e(name)}</dt><dd>{_e(doc)}</dd>")
    out.append("</dl>")
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


def render_status_html(job: JobStatus, *, now_unix_ms: int | None = None) -> str:
    """The ``/`` page: job, snapshot hash, progress per epoch, nodes and live leases."""
    status = job.to_dict(now_unix_ms=now_unix_ms)
    title = f"mx8 job {status['job_id']}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # A plain reload keeps the page working without JavaScript (and in --dump-dom).
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        *_summary(status, job.state_text),
        *_activity(status),
        *_progress_table(status),
        *_nodes_table(status),
        *_ranks_table(status),
        *_leases_table(status),
        f'<p><small>refreshes every {REFRESH_SECONDS} s · <a href="/api/status">JSON</a> · '
        '<a href="/metrics">Prometheus metrics</a></small></p>',
        "</body></html>",
    ]
    return "\n".join(parts)
