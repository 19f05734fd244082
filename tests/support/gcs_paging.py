"""A paging front for gcp-storage-emulator: real HTTP on 127.0.0.1, so mx8's GCS listing
can be tested over many pages.

The emulator answers every ``objects.list`` in one page: it ignores ``maxResults`` and
``pageToken`` (its ``handlers/objects.py::ls`` reads only prefix, delimiter, matchGlob and
softDeleted). This server forwards each request to the emulator and, for listings, cuts the
emulator's one answer into pages as GCS does: ``items`` and ``prefixes`` together in name
order, at most ``min(maxResults, page_cap)`` entries a page, the rest behind an opaque
``nextPageToken``. Every other request (object GETs) is relayed unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GcsPagingFront", "gcs_paging_front"]

_LIST_PATH = re.compile(r"^/storage/v1/b/[^/]+/o$")


@dataclass
class GcsPagingFront:
    """The running front: its URL (for ``STORAGE_EMULATOR_HOST``) and what it served."""

    upstream: str
    page_cap: int
    url: str = ""
    #: ``(maxResults asked, entries answered, had a pageToken)`` per listing request.
    list_calls: list[tuple[int, int, bool]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def page(self, answer: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        """One page of the emulator's whole ``answer`` for this request's query."""
        entries = sorted(
            [(item["name"], "item", item) for item in answer.get("items") or ()]
            + [(name, "prefix", name) for name in answer.get("prefixes") or ()],
            key=lambda entry: entry[0],
        )
        token = query.get("pageToken")
        if token:
            after = base64.urlsafe_b64decode(token.encode()).decode()
            entries = [entry for entry in entries if entry[0] > after]
        asked = int(query.get("maxResults", "1000"))
        size = max(1, min(asked, self.page_cap))
        served, rest = entries[:size], entries[size:]
        self.list_calls.append((asked, len(served), bool(token)))
        page: dict[str, Any] = {
            "kind": "storage#objects",
            "items": [value for _name, kind, value in served if kind == "item"],
            "prefixes": [value for _name, kind, value in served if kind == "prefix"],
        }
        if rest:
            page["nextPageToken"] = base64.urlsafe_b64encode(served[-1][0].encode()).decode()
        return page


def _handler(front: GcsPagingFront) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _relay(self, method: str) -> None:
            path, _, raw_query = self.path.partition("?")
            query = dict(urllib.parse.parse_qsl(raw_query))
            listing = method == "GET" and _LIST_PATH.match(path) is not None
            forward = path
            if listing:
                upstream_query = {
                    k: v for k, v in query.items() if k not in ("maxResults", "pageToken")
                }
                forward += "?" + urllib.parse.urlencode(upstream_query)
            elif raw_query:
                forward += "?" + raw_query
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
            }
            request = urllib.request.Request(
                front.upstream + forward, data=body, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:
                    status, answer_headers, data = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as err:
                status, answer_headers, data = err.code, err.headers, err.read()
            if listing and status == 200:
                data = json.dumps(front.page(json.loads(data), query)).encode()
            self.send_response(status)
            for name, value in answer_headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._relay("GET")

        def do_POST(self) -> None:
            self._relay("POST")

        def do_DELETE(self) -> None:
            self._relay("DELETE")

    return Handler


@contextlib.contextmanager
def gcs_paging_front(upstream: str, page_cap: int) -> Iterator[GcsPagingFront]:
    """Run a paging front for the emulator at ``upstream`` on a free loopback port."""
    front = GcsPagingFront(upstream, page_cap)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(front))
    server.daemon_threads = True
    front.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="gcs-paging-front", daemon=True)
    thread.start()
    try:
        yield front
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
