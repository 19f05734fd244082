"""Rank-exact mode's worlds in the coordinator's ``--state-dir``, apart from the lease log.

``<state_dir>/<job_id>.worlds.json`` holds the contract and rank holders of each world
the coordinator knows (``KnownWorlds.to_json``), so a coordinator restarted with its
state dir knows them before any agent reports (their trainers rejoin at once and
reports are checked against them). It is small and rewritten whole when a world changes
(a temporary file renamed over it: a crash leaves the old or the new one). Positions are
not in it: the agents report them. A file of another snapshot is ignored: positions of
one snapshot mean nothing for another.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from mx8_common.errors import LeaseLogError
from mx8_common.obs.events import emit

__all__ = ["WorldFile"]

_COMPONENT = "coordinator"
_VERSION = 1


class WorldFile:
    """The world file of one job in one state dir (blocking I/O: call it off the loop)."""

    def __init__(self, state_dir: str | os.PathLike[str], job_id: str, manifest_hash: str):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)
        self.path = Path(state_dir) / f"{safe}.worlds.json"
        self.job_id = job_id
        self.manifest_hash = manifest_hash

    def load(self) -> list[dict[str, Any]]:
        """The saved worlds (none if there is no file or it is another snapshot's)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise LeaseLogError(
                f"world file {self.path} is unreadable ({exc}); delete it: agents report "
                "their worlds again when they re-register",
                path=str(self.path),
            ) from None
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise LeaseLogError(
                f"world file {self.path} is not a version {_VERSION} world file; delete it: "
                "agents report their worlds again when they re-register",
                path=str(self.path),
            )
        if data.get("job_id") != self.job_id or data.get("manifest_hash") != self.manifest_hash:
            emit(
                _COMPONENT,
                "world_file_ignored",
                path=str(self.path),
                job_id=data.get("job_id"),
                manifest_hash=data.get("manifest_hash"),
                reason="another job or snapshot",
            )
            return []
        worlds = data.get("worlds")
        return list(worlds) if isinstance(worlds, list) else []

    def save(self, worlds: list[dict[str, Any]]) -> None:
        body = {
            "version": _VERSION,
            "job_id": self.job_id,
            "manifest_hash": self.manifest_hash,
            "worlds": worlds,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(body, sort_keys=True))
        tmp.replace(self.path)
