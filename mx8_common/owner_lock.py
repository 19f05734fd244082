"""One owner per resource: an exclusive ``flock`` on a lock file that names its owner.

A daemon holds the lock for as long as it runs (a unix socket path, a coordinator state
dir); the kernel drops it when the process dies, so a lock file left by a killed daemon
is stale by construction and the next owner simply takes it. The file stays in place on
release: unlinking a locked file lets a racer lock a different inode.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from mx8_common.errors import ConfigError

__all__ = ["OwnerLock", "OwnerLockHeld"]


class OwnerLockHeld(Exception):
    """Another live process holds the lock; ``owner`` is what it wrote ("host pid N")."""

    def __init__(self, path: Path, owner: str) -> None:
        super().__init__(f"{path} is locked by {owner}")
        self.path = path
        self.owner = owner


class OwnerLock:
    """An exclusive lock on ``path`` whose content is ``"<host> pid <pid>"``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ``OwnerLockHeld``; a path that cannot hold a lock file
        (a directory, a read-only or missing parent) is a ``ConfigError`` naming it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except IsADirectoryError:
            raise ConfigError(
                f"the lock file {self.path} is a directory; remove it (or pick another path)"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot create the lock file {self.path}: {exc.strerror}; make its folder "
                "writable or pick another path"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 256, 0).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise OwnerLockHeld(self.path, owner) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
