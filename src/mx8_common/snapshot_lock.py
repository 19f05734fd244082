"""Single-writer election for indexing one link: one resolver indexes, the rest wait.

The lock is ``locks/<intent key>.lock`` in the manifest store, created only if absent
(fs: ``os.link``; S3: ``If-None-Match: *``). Its body names the holder and a heartbeat
the holder rewrites every ``stale_ms / 4``. A waiter takes the lock over when the holder
looks dead: its heartbeat is older than ``stale_ms`` by wall clock, or the waiter has seen
the same body for ``stale_ms`` by its own monotonic clock (robust to clock skew across
hosts). Takeover is a compare-and-delete of exactly the body judged stale, then a normal
create, so of many waiters one wins.

Why a lost race is not a disaster: manifests are content-addressed and stored with
conditional creates plus a collision check, so two indexers of one link store the same
bytes under the same hash. The lock saves work; it is not what keeps snapshots correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mx8_common.errors import LockTimeoutError
from mx8_common.events import emit
from mx8_common.manifest_store import LockState, ManifestStore

__all__ = ["SnapshotLock", "run_single_writer"]

T = TypeVar("T")

_COMPONENT = "snapshot"


class SnapshotLock:
    """One contender for the lock of one intent key (keep it across polls: it tracks staleness)."""

    def __init__(
        self,
        store: ManifestStore,
        key: str,
        *,
        link: str,
        stale_ms: int = 60_000,
        heartbeat_ms: int | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.link = link
        self.stale_ms = stale_ms
        self.heartbeat_ms = heartbeat_ms or max(stale_ms // 4, 10)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._seq = 0
        self._version: str | None = None
        self._seen: tuple[str, float] | None = None  # (version, monotonic first seen)
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self._version is not None

    def _body(self) -> bytes:
        self._seq += 1
        return json.dumps(
            {"owner": self.owner, "seq": self._seq, "heartbeat_ms": int(time.time() * 1000)}
        ).encode()

    def _is_stale(self, state: LockState) -> bool:
        now = time.monotonic()
        if self._seen is None or self._seen[0] != state.version:
            self._seen = (state.version, now)
        unchanged_ms = (now - self._seen[1]) * 1000
        try:
            beat = int(json.loads(state.body)["heartbeat_ms"])
            wall_age_ms = time.time() * 1000 - beat
        except (ValueError, KeyError, TypeError):
            wall_age_ms = 0.0  # an unreadable body goes stale by local observation only
        return unchanged_ms > self.stale_ms or wall_age_ms > self.stale_ms

    async def try_acquire(self) -> bool:
        """Take the lock if it is free or its holder looks dead; never waits."""
        version = await self.store.lock_create(self.key, self._body())
        if version is None:
            state = await self.store.lock_read(self.key)
            if state is None or not self._is_stale(state):
                return False
            emit(_COMPONENT, "snapshot_lock_stale_takeover", link=self.link, previous=state.body)
            if not await self.store.lock_delete(self.key, state.version):
                return False
            version = await self.store.lock_create(self.key, self._body())
            if version is None:
                return False
        self._version = version
        self._heartbeat = asyncio.create_task(self._beat())
        return True

    def _ours(self, state: LockState | None) -> bool:
        if state is None:
            return False
        try:
            return json.loads(state.body).get("owner") == self.owner
        except (ValueError, AttributeError):
            return False

    async def _beat(self) -> None:
        while self._version is not None:
            await asyncio.sleep(self.heartbeat_ms / 1000)
            if self._version is None:
                return
            new = await self.store.lock_replace(self.key, self._version, self._body())
            if new is None:
                # A refused swap may be our own earlier write whose answer we never saw
                # (a conflict, a cancelled request): trust the body's owner, not the version.
                state = await self.store.lock_read(self.key)
                if self._ours(state):
                    assert state is not None
                    self._version = state.version
                    continue
                # Someone took the lock over; finish anyway (content addressing keeps it safe).
                emit(_COMPONENT, "snapshot_lock_lost", link=self.link)
                self._version = None
                return
            self._version = new

    async def release(self) -> None:
        """Stop heartbeating and delete the lock if it is still ours (idempotent)."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        version, self._version = self._version, None
        if version is not None and not await self.store.lock_delete(self.key, version):
            # A heartbeat cancelled mid-write may have moved the version: delete by owner.
            state = await self.store.lock_read(self.key)
            if self._ours(state):
                assert state is not None
                await self.store.lock_delete(self.key, state.version)


async def run_single_writer(
    store: ManifestStore,
    key: str,
    *,
    link: str,
    find_done: Callable[[], Awaitable[T | None]],
    index: Callable[[], Awaitable[T]],
    stale_ms: int = 60_000,
    wait_timeout_ms: int = 30_000,
    poll_ms: int = 50,
) -> tuple[T, bool]:
    """Index under the lock, or wait for whoever holds it and reuse their result.

    ``find_done()`` returns a finished result (another resolver's) or None; it is asked
    before indexing under a fresh lock too, in case the holder finished just before.
    Returns ``(result, indexed_here)``. Emits ``snapshot_indexer_elected`` once when this
    caller indexes and ``snapshot_index_waiting`` once when it has to wait.
    """
    lock = SnapshotLock(store, key, link=link, stale_ms=stale_ms)
    deadline = time.monotonic() + wait_timeout_ms / 1000
    waiting = False
    while True:
        if await lock.try_acquire():
            try:
                done = await find_done()
                if done is not None:
                    return done, False
                emit(_COMPONENT, "snapshot_indexer_elected", link=link, intent_key=key)
                return await index(), True
            finally:
                await lock.release()
        done = await find_done()
        if done is not None:
            return done, False
        if not waiting:
            waiting = True
            emit(_COMPONENT, "snapshot_index_waiting", link=link, intent_key=key)
        if time.monotonic() > deadline:
            raise LockTimeoutError(
                f"{link}: waited {wait_timeout_ms} ms for another resolver to finish indexing "
                "it (lock locks/" + key + ".lock); raise MX8_SNAPSHOT_WAIT_TIMEOUT_MS for big "
                "datasets, or lower MX8_SNAPSHOT_LOCK_STALE_MS if the holder died"
            )
        # Jitter so many waiters do not hit the store in lockstep.
        await asyncio.sleep(poll_ms / 1000 * random.uniform(0.5, 1.5))
