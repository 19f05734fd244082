"""The one line a plain link's reuse of a stored snapshot says (``snapshot_reused``).

A plain link reuses the snapshot last indexed for it, so objects added or changed since
are not seen until ``link@refresh``. That is the point of a snapshot, but a silent reuse
made stale data look current: the first reuse in a process says which snapshot it is, when
it was indexed, how many objects it holds and the ``@refresh`` link that indexes again.
"""

from __future__ import annotations

import dataclasses
import datetime
import time

from mx8_common.link import DatasetLink
from mx8_common.obs.events import emit

__all__ = ["age_text", "announce_reuse"]

#: (intent key, manifest hash) pairs whose reuse this process already announced.
_announced: set[tuple[str, str]] = set()


def announce_reuse(
    link: DatasetLink, key: str, manifest_hash: str, objects: int, indexed_at: float
) -> None:
    """Emit ``snapshot_reused`` once per process for this link (intent ``key``) and hash."""
    if (key, manifest_hash) in _announced:
        return
    _announced.add((key, manifest_hash))
    when = datetime.datetime.fromtimestamp(indexed_at, datetime.UTC)
    emit(
        "snapshot",
        "snapshot_reused",
        link=link.display(),
        manifest_hash=manifest_hash,
        indexed_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        age=age_text(time.time() - indexed_at),
        objects=objects,
        refresh_with=dataclasses.replace(link, mode="refresh").display(),
    )


def age_text(seconds: float) -> str:
    """A rounded age for people: ``"42s"``, ``"17min"``, ``"5h"`` or ``"3d"``."""
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"
