"""Single-writer election for indexing one link: one resolver indexes, the rest wait.

The lock is ``locks/<intent key>.lock`` in the manifest store, created only if absent
(fs: ``os.link``; S3: ``If-None-Match: *``). Its body (JSON) names the holder, a heartbeat
the holder rewrites every ``stale_ms / 4`` and, since progress reporting, the holder's
progress (``{"objects_indexed": N, "phase": ...}``; bodies without it still parse).

A waiter takes the lock over only when the holder looks dead: its heartbeat is older than
``stale_ms`` by wall clock, or the waiter has seen the same body for ``stale_ms`` by its
own monotonic clock (robust to clock skew across hosts). Takeover is a compare-and-delete
of exactly the body judged stale, then a normal create, so of many waiters one wins.
While the heartbeat advances the waiter waits, however long indexing takes (a 10M-key
listing runs for minutes); ``wait_timeout_ms`` is an optional overall cap. A holder whose
heartbeat ticks but whose progress has not moved for ``stale_ms`` is reported
(``snapshot_index_stalled``) and still waited for: two indexers is worse than waiting.

Why a lost race is not a disaster: manifests are content-addressed and stored with
conditional creates plus a collision check, so two indexers of one link store the same
bytes under the same hash. The lock saves work; it is not what keeps snapshots correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from mx8_common.errors import LockTimeoutError
from mx8_common.obs.events import emit, get_logger
from mx8_common.retry import Backoff
from mx8_common.store import LockState, ManifestStore

__all__ = ["LockHolder", "ProgressFn", "SnapshotLock", "parse_lock_body", "run_single_writer"]

T = TypeVar("T")

#: Returns the holder's progress as JSON-able fields, e.g. ``{"objects_indexed": 1200}``;
#: read at every heartbeat, so it must be cheap and must not block.
ProgressFn = Callable[[], Mapping[str, int | str]]

_COMPONENT = "snapshot"


@dataclass(frozen=True)
class LockHolder:
    """What a waiter reads from a lock body: who holds it, its heartbeat and progress."""

    owner: str
    seq: int
    heartbeat_ms: int
    #: The holder's progress fields; None for a holder that does not report progress.
    progress: Mapping[str, int | str] | None = None

    @property
    def host(self) -> str:
        """The holder's host name (``owner`` is ``host:pid:token``)."""
        return self.owner.split(":", 1)[0]

    @property
    def objects_indexed(self) -> int | None:
        """Objects the holder has indexed so far, if it reports them."""
        value = (self.progress or {}).get("objects_indexed")
        return value if isinstance(value, int) else None


def parse_lock_body(body: bytes) -> LockHolder | None:
    """The holder a lock body names, or None for a body that is not one (foreign, damaged)."""
    try:
        doc = json.loads(body)
        progress = doc.get("progress")
        return LockHolder(
            owner=str(doc["owner"]),
            seq=int(doc["seq"]),
            heartbeat_ms=int(doc["heartbeat_ms"]),
            progress=dict(progress) if isinstance(progress, dict) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class SnapshotLock:
    """One contender for the lock of one intent key (keep it across polls: it tracks staleness).

    ``progress`` is read at each heartbeat and written into the body, so waiters see how
    far the holder got without the lock knowing what is being indexed.
    """

    def __init__(
        self,
        store: ManifestStore,
        key: str,
        *,
        link: str,
        stale_ms: int = 60_000,
        heartbeat_ms: int | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.link = link
        self.stale_ms = stale_ms
        self.heartbeat_ms = heartbeat_ms or max(stale_ms // 4, 10)
        self.progress = progress
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        #: The other holder as last read by ``try_acquire`` (None: not seen or unreadable).
        self.holder: LockHolder | None = None
        self._seq = 0
        self._version: str | None = None
        self._seen: tuple[str, float] | None = None  # (version, monotonic first seen)
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """Whether this contender holds the lock now."""
        return self._version is not None

    def _body(self) -> bytes:
        self._seq += 1
        doc: dict[str, object] = {
            "owner": self.owner,
            "seq": self._seq,
            "heartbeat_ms": int(time.time() * 1000),
        }
        if self.progress is not None:
            doc["progress"] = dict(self.progress())
        return json.dumps(doc).encode()

    def _is_stale(self, state: LockState) -> bool:
        now = time.monotonic()
        if self._seen is None or self._seen[0] != state.version:
            self._seen = (state.version, now)
        unchanged_ms = (now - self._seen[1]) * 1000
        holder = parse_lock_body(state.body)
        # An unreadable body goes stale by local observation only.
        wall_age_ms = time.time() * 1000 - holder.heartbeat_ms if holder is not None else 0.0
        return unchanged_ms > self.stale_ms or wall_age_ms > self.stale_ms

    async def try_acquire(self) -> bool:
        """Take the lock if it is free or its holder looks dead; never waits."""
        version = await self.store.lock_create(self.key, self._body())
        if version is None:
            state = await self.store.lock_read(self.key)
            if state is None:
                return False
            self.holder = parse_lock_body(state.body)
            if not self._is_stale(state):
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
        holder = parse_lock_body(state.body)
        return holder is not None and holder.owner == self.owner

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


class _WaitWatch:
    """What a waiter tells the user: who it waits for, how far they got, whether they stall."""

    def __init__(self, link: str, key: str, stale_ms: int, report_every_ms: int) -> None:
        self.link = link
        self.key = key
        self.stale_ms = stale_ms
        self.report_every_ms = report_every_ms
        self.started = time.monotonic()
        self._waiting = False
        self._last_report = self.started
        # (owner, progress) last seen, when it last changed, and whether its stall was told.
        self._mark: tuple[str, object] | None = None
        self._mark_since = self.started
        self._stall_told = False

    def _fields(self, holder: LockHolder | None) -> dict[str, object]:
        fields: dict[str, object] = {"link": self.link, "intent_key": self.key}
        fields["holder"] = holder.owner if holder is not None else None
        fields["objects_indexed"] = holder.objects_indexed if holder is not None else None
        if holder is not None and holder.progress is not None:
            fields.update({k: v for k, v in holder.progress.items() if k not in fields})
        return fields

    @property
    def waited_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def observe(self, holder: LockHolder | None) -> None:
        """Emit the waiting / progress / stalled events this observation calls for."""
        now = time.monotonic()
        if not self._waiting:
            self._waiting = True
            emit(_COMPONENT, "snapshot_index_waiting", **self._fields(holder))
        if (now - self._last_report) * 1000 >= self.report_every_ms:
            self._last_report = now
            emit(
                _COMPONENT,
                "snapshot_index_wait_progress",
                waited_s=round(now - self.started, 1),
                **self._fields(holder),
            )
        if holder is None or holder.progress is None:
            return  # an old or unreadable holder: its liveness is all a waiter can judge
        mark = (holder.owner, sorted(holder.progress.items()))
        if mark != self._mark:
            self._mark, self._mark_since, self._stall_told = mark, now, False
        elif not self._stall_told and (now - self._mark_since) * 1000 > self.stale_ms:
            # The heartbeat still ticks (else try_acquire would have taken over) but the
            # work does not move: say so once per stall, and keep waiting.
            self._stall_told = True
            get_logger(_COMPONENT).warning(
                "snapshot_index_stalled",
                stalled_s=round(now - self._mark_since, 1),
                waited_s=round(now - self.started, 1),
                **self._fields(holder),
            )

    def timeout_error(self, holder: LockHolder | None, cap_ms: int) -> LockTimeoutError:
        who = ""
        if holder is not None:
            done = holder.objects_indexed
            so_far = f", {done:,} objects indexed so far" if done is not None else ""
            who = f" ({holder.owner}{so_far})"
        return LockTimeoutError(
            f"{self.link}: waited {cap_ms} ms for another resolver{who} to finish indexing "
            f"it (lock locks/{self.key}.lock); raise MX8_SNAPSHOT_WAIT_TIMEOUT_MS or set it to "
            "0 (wait while the indexer is alive) for big datasets, or lower "
            "MX8_SNAPSHOT_LOCK_STALE_MS if the holder died"
        )


async def run_single_writer(
    store: ManifestStore,
    key: str,
    *,
    link: str,
    find_done: Callable[[], Awaitable[T | None]],
    index: Callable[[], Awaitable[T]],
    stale_ms: int = 60_000,
    wait_timeout_ms: int = 0,
    poll_ms: int = 50,
    progress: ProgressFn | None = None,
    report_every_ms: int = 10_000,
    on_wait: Callable[[LockHolder | None], None] | None = None,
) -> tuple[T, bool]:
    """Index under the lock, or wait for whoever holds it and reuse their result.

    ``find_done()`` returns a finished result (another resolver's) or None; it is asked
    before indexing under a fresh lock too, in case the holder finished just before.
    Returns ``(result, indexed_here)``. A waiter waits while the holder's heartbeat
    advances and takes over when it stops for ``stale_ms``; ``wait_timeout_ms > 0`` caps
    the whole wait (``LockTimeoutError``), 0 means no cap. ``progress`` is this caller's
    progress while it indexes, published in the lock body at every heartbeat;
    ``on_wait(holder)`` is called at every poll while waiting (a progress display).

    Events: ``snapshot_indexer_elected`` once when this caller indexes;
    ``snapshot_index_waiting`` once when it has to wait, then ``snapshot_index_wait_progress``
    every ``report_every_ms`` (holder, ``objects_indexed``, ``waited_s``), and a warning
    ``snapshot_index_stalled`` once per stall of a live holder's progress.
    """
    lock = SnapshotLock(store, key, link=link, stale_ms=stale_ms, progress=progress)
    watch = _WaitWatch(link, key, stale_ms, report_every_ms)
    # A waiter may wait for minutes: back off to ~1 s between polls (the holder's body
    # changes only every stale_ms / 4 anyway) so many ranks do not hammer the store.
    # Jitter of +-50% so many waiters do not hit the store in lockstep.
    polls = Backoff(
        base_s=poll_ms / 1000,
        max_s=max(poll_ms, min(1000, stale_ms // 8)) / 1000,
        factor=1.25,
        jitter=(0.5, 1.5),
    ).delays()
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
        watch.observe(lock.holder)
        if on_wait is not None:
            on_wait(lock.holder)
        if wait_timeout_ms > 0 and watch.waited_ms > wait_timeout_ms:
            raise watch.timeout_error(lock.holder, wait_timeout_ms)
        await asyncio.sleep(next(polls))
