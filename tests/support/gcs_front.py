"""A front for gcp-storage-emulator that answers as GCS does where the emulator does not:
real HTTP on 127.0.0.1, every request relayed to the emulator.

* **Pages.** The emulator answers every ``objects.list`` in one page: it ignores
  ``maxResults`` and ``pageToken`` (its ``handlers/objects.py::ls`` reads only prefix,
  delimiter, matchGlob and softDeleted). The front cuts that one answer into pages as GCS
  does: ``items`` and ``prefixes`` together in name order, at most
  ``min(maxResults, page_cap)`` entries a page, the rest behind an opaque
  ``nextPageToken``.
* **Last-Modified.** GCS sends it on every media download; the emulator sends none. The
  front adds it from the object's ``updated`` metadata (asked of the emulator), so the
  reader's modified-after-listing check can be tested.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import http.client
import http.server
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from support.loopback_http import answer, forward, serve_http

__all__ = ["GcsFront", "gcs_front"]

_LIST_PATH = re.compile(r"^/storage/v1/b/[^/]+/o$")
_MEDIA_PATH = re.compile(r"^/download(?P<meta>/storage/v1/b/[^/]+/o/[^/]+)$")


@dataclass
class GcsFront:
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


def _last_modified(host: str, port: int, meta_path: str) -> str | None:
    """The object's ``updated`` time (from the emulator's metadata) as an HTTP date."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", meta_path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        updated = json.loads(body).get("updated")
    finally:
        conn.close()
    if not updated:
        return None
    when = datetime.datetime.fromisoformat(updated.replace("Z", "+00:00"))
    return email.utils.format_datetime(when.astimezone(datetime.UTC), usegmt=True)


def _handler(front: GcsFront) -> type[http.server.BaseHTTPRequestHandler]:
    upstream = urllib.parse.urlsplit(front.upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _relay(self) -> None:
            path, _, raw_query = self.path.partition("?")
            host, port = upstream.hostname or "", upstream.port or 80
            media = _MEDIA_PATH.match(path) if self.command == "GET" else None
            if media is not None:
                status, headers, data = forward(self, host, port)
                named = any(name.lower() == "last-modified" for name, _ in headers)
                if status in (200, 206) and not named:
                    when = _last_modified(host, port, media["meta"])
                    if when is not None:
                        headers.append(("Last-Modified", when))
                answer(self, status, headers, data)
                return
            listing = self.command == "GET" and _LIST_PATH.match(path) is not None
            if not listing:
                answer(self, *forward(self, host, port))
                return
            query = dict(urllib.parse.parse_qsl(raw_query))
            whole = {k: v for k, v in query.items() if k not in ("maxResults", "pageToken")}
            status, headers, data = forward(
                self, host, port, path + "?" + urllib.parse.urlencode(whole)
            )
            if status == 200:
                data = json.dumps(front.page(json.loads(data), query)).encode()
            answer(self, status, headers, data)

        do_GET = do_POST = do_DELETE = _relay

    return Handler


@contextlib.contextmanager
def gcs_front(upstream: str, page_cap: int = 1000) -> Iterator[GcsFront]:
    """Run a front for the emulator at ``upstream`` on a free loopback port."""
    front = GcsFront(upstream, page_cap)
    with serve_http(_handler(front), "gcs-front") as url:
        front.url = url
        yield front
