"""The coordinator's ``--state-dir``: made ready and owned by one coordinator at a time.

Two coordinators writing one lease log mix two jobs' records (lease ids collide on
replay), so the dir is claimed with an exclusive lock on ``<state_dir>/coordinator.lock``
naming its owner (host and pid), held until shutdown. The kernel drops the lock of a
killed coordinator, so the next one starts without manual cleanup.
"""

from __future__ import annotations

import os
from pathlib import Path

from mx8_common.errors import ConfigError
from mx8_common.owner_lock import OwnerLock, OwnerLockHeld

__all__ = ["LOCK_NAME", "claim_state_dir"]

LOCK_NAME = "coordinator.lock"


def _prepare(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"--state-dir {path}: it or one of its parents is a regular file; pick a directory path"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"--state-dir {path} cannot be created: {exc.strerror}; pick a writable directory"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--state-dir {path} is not writable (read-only mount or permissions); pick a "
            "writable directory or fix its permissions"
        )


def claim_state_dir(state_dir: str | os.PathLike[str]) -> OwnerLock:
    """Create ``state_dir`` if needed and lock it for this process; ``ConfigError`` naming
    the path and the fix when it cannot be used or another coordinator owns it."""
    path = Path(state_dir)
    _prepare(path)
    lock = OwnerLock(path / LOCK_NAME)
    try:
        lock.acquire()
    except OwnerLockHeld as held:
        raise ConfigError(
            f"another coordinator ({held.owner}) owns state dir {path}; stop it, or give "
            "this one another --state-dir"
        ) from None
    return lock
