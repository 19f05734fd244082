"""Shared-memory files of one host's agent and trainers (the same-host batch hand-over).

An agent and its trainers share a host, so a batch's bytes need not travel through the
gRPC stream: the agent writes them into a segment file in ``/dev/shm`` and the message
names the file, the offset and the length (``SharedBytes``). Both sides only agree on
names here:

* **Probe** (``write_probe`` / ``check_probe``): the trainer writes a small file of random
  bytes and names it in ``OpenStream.shm_probe``; the agent uses shared memory for that
  stream only when it reads the same bytes under that name, i.e. when both see the same
  ``/dev/shm`` (another host, another container without a shared ``/dev/shm``: the
  stream keeps payload bytes in its messages).
* **Segments** (``create_segment``): files ``mx8-seg-*``, created by the agent with their
  size reserved (``posix_fallocate``: a full ``/dev/shm`` is an error at creation, not a
  SIGBUS at a later write) and held under a shared ``flock`` while the agent maps them.
  ``sweep`` unlinks segments whose agent died (no lock held) and stale probes, so a
  killed agent's files go when the next one starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "PROBE_PREFIX",
    "SEGMENT_PREFIX",
    "SHM_DIR",
    "Segment",
    "check_probe",
    "create_segment",
    "sweep",
    "valid_name",
    "write_probe",
]

SHM_DIR = Path("/dev/shm")
PROBE_PREFIX = "mx8-probe-"
SEGMENT_PREFIX = "mx8-seg-"
_NAME = re.compile(r"mx8-(probe|seg)-[0-9a-f]{8,64}")
_TOKEN_BYTES = 16
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: A probe older than this was left by a trainer that died before the agent read it.
_PROBE_STALE_S = 300.0


def valid_name(name: str) -> bool:
    """An mx8 shared-memory file name (no directory part, nothing a path could escape by)."""
    return _NAME.fullmatch(name) is not None


def write_probe(directory: Path = SHM_DIR) -> tuple[str, bytes] | None:
    """Write a probe file: ``(name, token)``, or None where shared memory is unusable."""
    name = PROBE_PREFIX + secrets.token_hex(8)
    token = secrets.token_bytes(_TOKEN_BYTES)
    try:
        # World-readable: it holds only a random token, and an agent running as another
        # user (the systemd unit's mx8) must read it.
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        os.write(fd, token)
    except OSError:
        os.close(fd)
        remove(name, directory)
        return None
    os.close(fd)
    return name, token


def check_probe(name: str, token: bytes, directory: Path = SHM_DIR) -> bool:
    """True when ``directory/name`` holds ``token`` (then the probe is removed)."""
    if not valid_name(name) or not name.startswith(PROBE_PREFIX) or len(token) != _TOKEN_BYTES:
        return False
    try:
        fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        found = os.read(fd, _TOKEN_BYTES + 1)
    except OSError:
        return False
    finally:
        os.close(fd)
    if found != token:
        return False
    remove(name, directory)
    return True


def remove(name: str, directory: Path = SHM_DIR) -> None:
    """Unlink ``directory/name`` if it is still there."""
    with contextlib.suppress(OSError):
        os.unlink(directory / name)


class Segment:
    """One segment file of the agent that created it. ``map`` maps it (pages populated
    up front) on first use: the agent writes batches it copies in through it, while the
    batches its read workers fill never need the agent's mapping (populating a 20 MiB
    segment took 7.5 ms)."""

    def __init__(self, name: str, directory: Path, fd: int, size: int) -> None:
        self.name = name
        self.directory = directory
        self.size = size
        self._fd = fd
        self._map: mmap.mmap | None = None
        self.linked = True
        #: Called once when the segment is closed (read workers unmap it then).
        self.on_close: list[Callable[[], None]] = []

    @property
    def map(self) -> mmap.mmap:
        if self._map is None:
            self._map = mmap.mmap(self._fd, self.size, flags=mmap.MAP_SHARED | _POPULATE)
        return self._map

    def fileno(self) -> int:
        """The open descriptor (-1 once closed): passed to read workers, not the name."""
        return self._fd

    def unlink(self) -> None:
        """Remove the name (mappings stay valid): once every reader has it open."""
        if self.linked:
            self.linked = False
            remove(self.name, self.directory)

    def close(self) -> None:
        """Unlink, unmap and release the lock; safe to call twice."""
        self.unlink()
        hooks, self.on_close = self.on_close, []
        for hook in hooks:
            hook()
        if self._fd >= 0:
            if self._map is not None:
                with contextlib.suppress(BufferError):
                    # A read still filling it holds a view: the mapping goes with its last
                    # user.
                    self._map.close()
            os.close(self._fd)
            self._fd = -1


def create_segment(size: int, directory: Path = SHM_DIR) -> Segment | None:
    """A new segment of ``size`` bytes, reserved; None when it cannot be made (no room)."""
    name = SEGMENT_PREFIX + secrets.token_hex(8)
    path = directory / name
    try:
        # Group-readable: trainers share the agent's group (they open its socket too).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            # Another agent's sweep took the name between open and lock: not ours now.
            os.close(fd)
            return None
        os.posix_fallocate(fd, 0, size)
        return Segment(name, directory, fd, size)
    except OSError:
        # No room (ENOSPC), no fallocate on this file system, the name swept meanwhile...:
        # whatever it is, this batch's bytes go in the message instead.
        os.close(fd)
        remove(name, directory)
        return None


def sweep(directory: Path = SHM_DIR, *, now: float | None = None) -> int:
    """Unlink segments no live agent holds and stale probes; how many were removed."""
    now = time.time() if now is None else now
    removed = 0
    try:
        names = [n for n in os.listdir(directory) if valid_name(n)]
    except OSError:
        return 0
    for name in names:
        path = directory / name
        if name.startswith(PROBE_PREFIX):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > _PROBE_STALE_S:
                    os.unlink(path)
                    removed += 1
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # a live agent holds it
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
        finally:
            os.close(fd)
    return removed
